"""Decisions through Engine.decide with the default GeoIP database, model and policy."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from risk_engine.assembly import load_scorer
from risk_engine.decision import Decision, Outcome
from risk_engine.engine import Engine, Scorer
from risk_engine.events import parse_event
from risk_engine.geo import GeoLocator
from risk_engine.policy import parse_policy
from risk_engine.privacy import Hasher
from risk_engine.profiles.memory import MemoryStore

OSLO = ZoneInfo("Europe/Oslo")
HOME_IP = "84.208.20.110"  # Oslo in the bundled GeoLite2
SYDNEY_IP = "61.68.0.1"  # Balmain, Sydney
LAPTOP = {
    "id": "d-laptop",
    "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "platform": "Win32",
    "timezone": "Europe/Oslo",
    "language": "nb-NO",
    "screen": "1920x1080",
}
STRANGER = {
    "id": "d-stranger",
    "user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "platform": "Linux x86_64",
    "timezone": "Australia/Sydney",
    "language": "en-AU",
    "screen": "1366x768",
}
START = datetime(2026, 2, 1, 8, 15, tzinfo=OSLO)


class Harness:
    """An engine with an in-memory store and a clock that follows the events."""

    def __init__(self, geo: GeoLocator) -> None:
        self.now = 0.0
        self.engine = Engine(
            store=MemoryStore(),
            geo=geo,
            scorer=load_scorer(None, None),
            hasher=Hasher("behavior-tests"),
            clock=lambda: self.now,
        )
        self._ids = count(1)

    def decide(
        self, when: datetime, *, user: str = "alice", pass_step_up: bool = True, **fields: Any
    ) -> Decision:
        n = next(self._ids)
        data = {
            "event_id": f"e-{n}",
            "timestamp": when.astimezone(UTC).isoformat(),
            "user_id": user,
            "action": "login",
            "ip": HOME_IP,
            "session_id": f"s-{n}",
            "device": LAPTOP,
            **fields,
        }
        event = parse_event(data)
        self.now = event.epoch
        decision = self.engine.decide(event)
        if decision.decision is Outcome.STEP_UP and pass_step_up:
            # The real user completes the challenge, as a real user would.
            self.engine.apply_outcome(
                user,
                event.event_id,
                passed=True,
                now=event.epoch + 30.0,
                acr=decision.required_acr,
            )
        return decision

    def usual_month(self, user: str = "alice") -> list[Decision]:
        """30 days of logins from the same laptop, at home, around 08:15 Oslo time."""
        return [
            self.decide(START + timedelta(days=day, minutes=day % 20), user=user)
            for day in range(30)
        ]


@pytest.fixture(scope="module")
def geo() -> Iterator[GeoLocator]:
    locator = GeoLocator()
    yield locator
    locator.close()


@pytest.fixture
def harness(geo: GeoLocator) -> Harness:
    return Harness(geo)


def test_usual_device_place_and_hour_is_allowed(harness: Harness) -> None:
    history = harness.usual_month()
    assert all(0.0 <= d.score <= 1.0 for d in history)
    decision = harness.decide(START + timedelta(days=30, minutes=5))
    assert decision.decision is Outcome.ALLOW
    assert decision.required_acr is None
    assert decision.action_class == "login"
    assert "impossible_travel" not in [r.code for r in decision.reasons]


def test_another_continent_minutes_later_on_a_new_device_is_stopped(harness: Harness) -> None:
    harness.usual_month()
    usual = harness.decide(START + timedelta(days=30, minutes=5))
    assert usual.decision is Outcome.ALLOW
    far = harness.decide(
        START + timedelta(days=30, minutes=25),
        ip=SYDNEY_IP,
        device=STRANGER,
        pass_step_up=False,
    )
    assert far.decision in (Outcome.STEP_UP, Outcome.DENY)
    codes = [r.code for r in far.reasons]
    assert "impossible_travel" in codes[:2], codes
    assert far.score > usual.score
    if far.decision is Outcome.STEP_UP:
        assert far.required_acr is not None and far.max_age is not None
        assert far.challenge is not None


def test_the_stopped_event_teaches_nothing(harness: Harness) -> None:
    harness.usual_month()
    harness.decide(
        START + timedelta(days=30, minutes=25), ip=SYDNEY_IP, device=STRANGER, pass_step_up=False
    )
    # Back home an hour later: the stranger's place did not become the last trusted place.
    back = harness.decide(START + timedelta(days=30, minutes=85))
    assert back.decision is Outcome.ALLOW
    assert "impossible_travel" not in [r.code for r in back.reasons]


def test_unknown_action_gets_the_default_policy_class(harness: Harness) -> None:
    harness.usual_month()
    decision = harness.decide(START + timedelta(days=30, minutes=5), action="approve_invoice")
    assert decision.action_class == "default"
    assert decision.decision in (Outcome.ALLOW, Outcome.STEP_UP, Outcome.DENY)


def test_decision_has_the_contract_fields(harness: Harness) -> None:
    decision = harness.decide(START)
    body = decision.contract_dict()
    assert body["event_id"] == "e-1"
    assert 0.0 <= body["score"] <= 1.0
    assert body["decision"] in {"allow", "step_up", "deny"}
    assert isinstance(body["reasons"], list)
    assert body["model_version"]


PHONE = {
    "id": "d-phone",
    "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "platform": "iPhone",
    "timezone": "Europe/Oslo",
    "language": "nb-NO",
    "screen": "390x844",
}
# A Norwegian mobile carrier's block: every /24 of it is Oslo in the bundled GeoLite2.
CARRIER_IPS = [f"176.11.{third}.{17 + third % 50}" for third in (104, 107, 109, 111, 115)]


def test_payee_then_a_large_transfer_at_3am_on_the_victims_own_device(harness: Harness) -> None:
    for day in range(30):
        harness.decide(START + timedelta(days=day, minutes=day % 20))
        evening = START + timedelta(days=day, hours=11, minutes=day % 20)
        harness.decide(evening, session_id=f"pay-{day}")
        harness.decide(
            evening + timedelta(minutes=2),
            session_id=f"pay-{day}",
            action="transfer",
            amount=400.0 + 10 * (day % 7),
            currency="NOK",
            payee="NO9386011117947",
        )
    night = datetime(2026, 3, 3, 3, 10, tzinfo=OSLO)
    # The malware uses the victim's laptop, at home, in a session of its own.
    harness.decide(night, session_id="mal", pass_step_up=False)
    harness.decide(
        night + timedelta(minutes=1),
        session_id="mal",
        action="add_payee",
        payee="LT601010012345678901",
        pass_step_up=False,
    )
    transfer = harness.decide(
        night + timedelta(minutes=3),
        session_id="mal",
        action="transfer",
        amount=25_000.0,
        currency="NOK",
        payee="LT601010012345678901",
        pass_step_up=False,
    )
    assert transfer.decision in (Outcome.STEP_UP, Outcome.DENY)
    details = {r.code: r.detail for r in transfer.reasons}
    assert "payee_then_transfer" in details, details
    assert "2 min before" in details["payee_then_transfer"]
    assert "quiet_hour_takeover" in details


def test_a_first_data_export_at_a_usual_hour_on_the_own_device_is_asked_about_once(
    harness: Harness,
) -> None:
    harness.usual_month()
    usual = START + timedelta(days=30, minutes=5)
    harness.decide(usual, session_id="x")
    # Malware (or the user) exports data for the first time, at the usual hour, at home.
    first = harness.decide(usual + timedelta(minutes=2), session_id="x", action="export_data")
    assert first.decision is Outcome.STEP_UP, first
    assert "first_privileged_action" in {r.code for r in first.reasons}
    # The user passed that step-up: the next export is no first and goes through.
    later = START + timedelta(days=31, minutes=5)
    harness.decide(later, session_id="y")
    again = harness.decide(later + timedelta(minutes=2), session_id="y", action="export_data")
    assert "first_privileged_action" not in {r.code for r in again.reasons}
    assert again.decision is Outcome.ALLOW, again


def test_a_phone_hopping_carrier_addresses_in_its_city_is_allowed(harness: Harness) -> None:
    for day in range(30):
        ip = CARRIER_IPS[day % len(CARRIER_IPS)]
        harness.decide(START + timedelta(days=day, minutes=day % 20), ip=ip, device=PHONE)
    # Another /24 of the block in Oslo, and one that GeoIP places only in Norway.
    for minutes, ip in ((3, "176.11.13.50"), (40, "176.11.120.9")):
        hop = harness.decide(START + timedelta(days=30, minutes=minutes), ip=ip, device=PHONE)
        assert hop.decision is Outcome.ALLOW, hop.reasons
        assert "new_network" not in [r.code for r in hop.reasons]
    # A network abroad is still a new one.
    abroad = harness.decide(
        START + timedelta(days=33), ip=SYDNEY_IP, device=PHONE, pass_step_up=False
    )
    assert "new_network" in [r.code for r in abroad.reasons]


def test_a_challenge_on_the_score_alone_still_says_why(harness: Harness) -> None:
    """A step-up no signal explains named no reason at all (a user challenged for an hour
    after a typo in the password, with no word of it); it names the score and threshold."""
    harness.usual_month()
    assert harness.engine.scorer is not None
    data = harness.engine.scorer.policy.model_dump(mode="json")
    data["classes"]["login"]["step_up"] = 0.000001  # every login is challenged on its score
    policy = parse_policy(data, "test")
    harness.engine.scorer = Scorer(harness.engine.scorer.artifact, policy)
    decision = harness.decide(START + timedelta(days=30, minutes=5))
    assert decision.decision is Outcome.STEP_UP
    assert [r.code for r in decision.reasons] == ["risk_score"]
    detail = decision.reasons[0].detail
    assert f"{decision.score:.4f}" in detail
    assert "login step-up threshold 1e-06" in detail
    # An allowed event with nothing to say still says nothing.
    data["classes"]["login"]["step_up"] = 0.999999
    data["classes"]["login"]["deny"] = 1.0
    harness.engine.scorer = Scorer(harness.engine.scorer.artifact, parse_policy(data, "test"))
    quiet = harness.decide(START + timedelta(days=31, minutes=5))
    assert quiet.decision is Outcome.ALLOW
    assert quiet.reasons == []
