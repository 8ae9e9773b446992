"""The profile update (the "learn" half of score-then-learn) and its bounds."""

from __future__ import annotations

import random
from dataclasses import asdict, replace
from datetime import UTC, datetime

import orjson
import pytest

from risk_engine.events import parse_event
from risk_engine.features.learn import hold_pending, learn, resolve_pending, unpassed_step_up
from risk_engine.features.observation import Observation, observe
from risk_engine.geo import Location
from risk_engine.privacy import Hasher
from risk_engine.profiles.model import (
    MAX_ACTIONS,
    MAX_AMOUNTS,
    MAX_CITIES,
    MAX_COUNTRIES,
    MAX_DEVICES,
    MAX_FAILURES,
    MAX_FAMILIES,
    MAX_IPS,
    MAX_NETWORKS,
    MAX_PAYEES,
    MAX_PENDING,
    MAX_PENDING_AGE_S,
    MAX_PLACES,
    MAX_RECENT,
    MAX_SESSIONS,
    MAX_STEPS,
    Profile,
)

HASHER = Hasher("learn-tests")
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC).timestamp()
HOUR = 3600.0
DAY = 86400.0
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
OSLO = Location(
    known=True,
    country="NO",
    city="Oslo",
    latitude=59.91,
    longitude=10.75,
    accuracy_km=20.0,
    time_zone="Europe/Oslo",
    network="AS2119",
)
LAGOS = Location(
    known=True,
    country="NG",
    city="Lagos",
    latitude=6.45,
    longitude=3.39,
    accuracy_km=50.0,
    time_zone="Africa/Lagos",
    network="AS29465",
)


def obs_at(
    ts: float,
    where: Location = OSLO,
    *,
    device_id: str = "d-laptop",
    user_agent: str = CHROME,
    ip: str = "81.2.69.160",
    action: str = "login",
    success: bool = True,
    session_id: str | None = "s-1",
    event_id: str | None = None,
) -> Observation:
    data = {
        "event_id": event_id or f"e-{ts:.0f}-{device_id}",
        "timestamp": datetime.fromtimestamp(ts, UTC).isoformat(),
        "user_id": "user",
        "action": action,
        "ip": ip,
        "device": {"id": device_id, "user_agent": user_agent, "platform": "Win32"},
        "success": success,
    }
    if session_id:
        data["session_id"] = session_id
    return observe(parse_event(data), where, HASHER, "user-key")


# -- trusted and untrusted events -------------------------------------------------------


def test_trusted_event_teaches_place_device_hour_and_counts() -> None:
    profile = Profile(user_key="user-key")
    obs = obs_at(T0)
    learn(profile, obs, trusted=True)
    assert profile.n_events == 1 and profile.n_seen == 1
    assert profile.created_ts == T0 and profile.last_ts == T0
    assert [(p.city, p.country) for p in profile.places] == [("Oslo", "NO")]
    record = profile.devices[obs.device_key]
    assert record.trusted and record.is_trusted(T0 + DAY)
    assert record.ua_family == "Chrome" and record.platform == "Win32"
    assert profile.hours[obs.hour_of_week] == 1.0 and sum(profile.hours) == 1.0
    assert profile.countries["NO"][0] == 1.0
    assert profile.cities["NO/Oslo"][0] == 1.0
    assert profile.networks["AS2119"][0] == 1.0
    assert profile.ips[obs.ip_key][0] == 1.0
    assert profile.actions["login"][0] == 1.0
    assert profile.recent == [T0]
    assert "s-1" in profile.sessions


def test_untrusted_event_counts_but_teaches_nothing() -> None:
    profile = Profile(user_key="user-key")
    obs = obs_at(T0, LAGOS, device_id="d-attacker", success=False)
    learn(profile, obs, trusted=False)
    assert profile.n_seen == 1
    assert profile.n_events == 0
    assert profile.recent == [T0]
    assert profile.failures == [T0]
    assert profile.places == []
    assert profile.countries == {} and profile.networks == {} and profile.ips == {}
    assert sum(profile.hours) == 0.0
    assert profile.sessions == {}
    record = profile.devices[obs.device_key]
    assert not record.trusted and not record.is_trusted(T0)


def test_untrusted_event_does_not_rewrite_a_trusted_device() -> None:
    profile = Profile(user_key="user-key")
    learn(profile, obs_at(T0), trusted=True)
    # A stolen cookie presented by another browser must not move the device's attributes.
    learn(profile, obs_at(T0 + HOUR, user_agent=FIREFOX), trusted=False)
    record = profile.devices[obs_at(T0).device_key]
    assert record.ua_family == "Chrome"
    assert record.count == 2


def test_device_trust_expires() -> None:
    profile = Profile(user_key="user-key")
    learn(profile, obs_at(T0), trusted=True, device_trust_s=10 * DAY)
    record = profile.devices[obs_at(T0).device_key]
    assert record.is_trusted(T0 + 9 * DAY)
    assert not record.is_trusted(T0 + 11 * DAY)


def test_only_failed_logins_count_as_failures() -> None:
    profile = Profile(user_key="user-key")
    learn(profile, obs_at(T0, action="transfer", success=False), trusted=False)
    learn(profile, obs_at(T0 + 1, success=True), trusted=False)
    assert profile.failures == []
    learn(profile, obs_at(T0 + 2, success=False), trusted=True)
    assert profile.failures == [T0 + 2]


# -- pending step-ups -------------------------------------------------------------------


def stepped_up_profile() -> tuple[Profile, Observation]:
    """A user at home, then an event from a new device abroad held for its step-up."""
    profile = Profile(user_key="user-key")
    for i in range(5):
        learn(profile, obs_at(T0 + i * DAY), trusted=True)
    held = obs_at(T0 + 6 * DAY, LAGOS, device_id="d-new-phone", event_id="e-held")
    # As the engine does for a step-up: counted, not refused, held for its outcome.
    learn(profile, held, trusted=False, refused=False)
    hold_pending(profile, held)
    return profile, held


def test_passed_step_up_trusts_the_device_and_adds_the_place() -> None:
    profile, held = stepped_up_profile()
    n_seen, recent = profile.n_seen, list(profile.recent)
    before = profile.devices.get(held.device_key)
    assert before is None or not before.trusted
    resolved = resolve_pending(profile, "e-held", passed=True, now=held.ts + 60)
    assert resolved == held
    assert profile.devices[held.device_key].is_trusted(held.ts)
    assert profile.places[-1].city == "Lagos"
    assert "NG" in profile.countries
    assert profile.n_events == 6
    # Not counted twice in velocity.
    assert profile.n_seen == n_seen and profile.recent == recent
    assert profile.devices[held.device_key].count == 1
    assert "e-held" not in profile.pending


def test_failed_step_up_teaches_nothing_and_counts_a_failure() -> None:
    profile, held = stepped_up_profile()
    before_failures = len(profile.failures)
    resolved = resolve_pending(profile, "e-held", passed=False, now=held.ts + 60)
    assert resolved == held
    assert not profile.devices[held.device_key].trusted
    assert all(place.city != "Lagos" for place in profile.places)
    assert "NG" not in profile.countries
    assert profile.n_events == 5
    assert len(profile.failures) == before_failures + 1
    assert profile.failures[-1] == held.ts + 60
    assert profile.pending == {}


def test_outcome_for_nothing_held_is_none() -> None:
    profile, _ = stepped_up_profile()
    before = profile.dumps()
    assert resolve_pending(profile, "e-unknown", passed=True, now=T0) is None
    assert profile.dumps() == before


def test_outcome_applies_once() -> None:
    profile, held = stepped_up_profile()
    assert resolve_pending(profile, "e-held", passed=True, now=held.ts) is not None
    assert resolve_pending(profile, "e-held", passed=True, now=held.ts) is None


def test_pending_survives_the_stored_form() -> None:
    profile, held = stepped_up_profile()
    stored = Profile.loads(profile.dumps())
    assert resolve_pending(stored, "e-held", passed=True, now=held.ts) == held
    assert stored.devices[held.device_key].trusted


def test_pending_is_capped_dropping_the_oldest() -> None:
    profile = Profile(user_key="user-key")
    for i in range(MAX_PENDING + 5):
        hold_pending(profile, obs_at(T0 + i, event_id=f"e-{i}"))
    assert len(profile.pending) == MAX_PENDING
    assert "e-0" not in profile.pending
    assert f"e-{MAX_PENDING + 4}" in profile.pending


def test_step_ups_past_completion_are_forgotten() -> None:
    profile = Profile(user_key="user-key")
    hold_pending(profile, obs_at(T0, event_id="e-old"))
    hold_pending(profile, obs_at(T0 + MAX_PENDING_AGE_S - 60, event_id="e-recent"))
    # Any later event of the user, a day on: the old step-up can no longer complete.
    learn(profile, obs_at(T0 + MAX_PENDING_AGE_S + 1), trusted=True)
    assert set(profile.pending) == {"e-recent"}
    assert resolve_pending(profile, "e-old", passed=True, now=T0 + DAY) is None


def test_a_continued_session_keeps_its_assurance_and_moves_on() -> None:
    profile = Profile(user_key="user-key")
    learn(profile, obs_at(T0), trusted=True)
    profile.sessions["s-1"].acr, profile.sessions["s-1"].auth_time = "phr", T0 + 5
    later = obs_at(T0 + 60, LAGOS, ip="81.2.69.161")
    learn(profile, later, trusted=True)
    record = profile.sessions["s-1"]
    assert (record.ts, record.ip_key, record.country, record.place) == (
        later.ts,
        later.ip_key,
        "NG",
        "Lagos, NG",
    )
    assert (record.acr, record.auth_time) == ("phr", T0 + 5)


def test_a_pending_step_up_leaves_its_session_as_it_was() -> None:
    profile = Profile(user_key="user-key")
    learn(profile, obs_at(T0), trusted=True)
    before = replace(profile.sessions["s-1"])
    # Challenged from elsewhere in the same session, not answered (yet).
    learn(profile, obs_at(T0 + 60, LAGOS, ip="81.2.69.161"), trusted=False, refused=False)
    assert profile.sessions["s-1"] == before
    # Nor does a challenged event open a session of its own.
    learn(profile, obs_at(T0 + 90, session_id="s-2"), trusted=False, refused=False)
    assert "s-2" not in profile.sessions


def test_a_step_up_not_passed_is_remembered_until_one_passes() -> None:
    profile = Profile(user_key="user-key")
    first = obs_at(T0, event_id="e-1")
    learn(profile, first, trusted=False, refused=False)
    hold_pending(profile, first)
    retry = obs_at(T0 + 5, event_id="e-2")
    assert unpassed_step_up(profile, retry) == T0
    # Another action, or another device, is no retry.
    assert unpassed_step_up(profile, obs_at(T0 + 5, action="transfer")) is None
    assert unpassed_step_up(profile, obs_at(T0 + 5, device_id="d-phone")) is None
    # A failure keeps it; a pass for the same action on the device clears it.
    resolve_pending(profile, "e-1", passed=False, now=T0 + 10)
    assert unpassed_step_up(profile, retry) == T0
    hold_pending(profile, retry)
    resolve_pending(profile, "e-2", passed=True, now=T0 + 20)
    assert unpassed_step_up(profile, obs_at(T0 + 30)) is None


def test_a_step_up_not_passed_is_forgotten_with_the_pending_ones() -> None:
    profile = Profile(user_key="user-key")
    hold_pending(profile, obs_at(T0, event_id="e-1"))
    late = obs_at(T0 + MAX_PENDING_AGE_S + 60, event_id="e-2")
    assert unpassed_step_up(profile, late) is None
    learn(profile, late, trusted=True)
    assert profile.challenged == {}


# -- bounded whatever the history -------------------------------------------------------

CAPS = {
    "places": MAX_PLACES,
    "devices": MAX_DEVICES,
    "countries": MAX_COUNTRIES,
    "cities": MAX_CITIES,
    "networks": MAX_NETWORKS,
    "ips": MAX_IPS,
    "families": MAX_FAMILIES,
    "actions": MAX_ACTIONS,
    "amounts": MAX_AMOUNTS,
    "payees": MAX_PAYEES,
    "steps": MAX_STEPS,
    "failures": MAX_FAILURES,
    "recent": MAX_RECENT,
    "sessions": MAX_SESSIONS,
    "pending": MAX_PENDING,
    "challenged": MAX_PENDING,
}


# Every other event is trusted; None stands for an ever-new action.
CYCLE = ("login", "change_mfa", "transfer", "add_payee", "add_payee", None, None, None)


def churn(
    n: int, *, attribute_len: int | None = None, pending: bool = True, seed: int = 0
) -> list[int]:
    """Learn ``n`` events with ever-new devices, addresses, places, sessions and actions.

    Returns the serialised size after every 500 events.
    """
    rng = random.Random(seed)
    base = obs_at(T0)
    profile = Profile(user_key="user-key")
    sizes = []
    for i in range(n):
        extra = {}
        if attribute_len is not None:
            extra = {
                key: chr(97 + i % 26) * attribute_len
                for key in ("platform", "timezone", "language", "screen")
            }
        obs = replace(
            base,
            event_id=f"e-{i:08d}",
            ts=T0 + i * 60.0,
            # Logins, payees added and paid, credential changes and unknown actions.
            action=CYCLE[i % len(CYCLE)] or f"action-{i % 97}",
            payee_key=f"{i:016x}",
            amount=rng.random() * 10_000,
            success=i % 3 != 0,
            session_id=f"s-{i:012d}",
            ip_key=f"{i:016x}",
            network=f"AS{100_000 + i}",
            network_family=f"AS{100_000 + i}",
            country=f"C{i % 250:03d}",
            city=f"City {i}",
            latitude=rng.uniform(-80, 80),
            longitude=rng.uniform(-170, 170),
            device_key=f"id:{i:016x}",
            hour_of_week=i % 168,
            **extra,
        )
        learn(profile, obs, trusted=i % 2 == 0)
        if pending and i % 3 == 1:
            hold_pending(profile, obs)
        if pending and i % 9 == 1:
            resolve_pending(profile, obs.event_id, passed=i % 2 == 0, now=obs.ts)
        if (i + 1) % 500 == 0:
            for name, cap in CAPS.items():
                assert len(getattr(profile, name)) <= cap, name
            assert len(profile.hours) == 168
            sizes.append(len(profile.dumps()))
    for name, cap in CAPS.items():
        if name not in ("pending", "challenged") or pending:
            assert len(getattr(profile, name)) == cap, f"{name} was never filled"
    assert Profile.loads(profile.dumps()).dumps() == profile.dumps()
    return sizes


def test_every_collection_stays_within_its_cap_and_the_size_stops_growing() -> None:
    sizes = churn(5000)
    # Full from early on; afterwards only number widths change.
    assert max(sizes[2:]) <= 1.05 * sizes[2]
    # Twelve devices, 48 addresses, 16 sessions and 16 held step-ups: some 32 KB.
    assert sizes[-1] < 40_000


def test_profile_without_outstanding_step_ups_stays_under_24_kb() -> None:
    sizes = churn(5000, pending=False)
    assert sizes[-1] < 24_000


@pytest.mark.parametrize("attribute_len", [512])
def test_profile_stays_bounded_with_the_largest_contract_attributes(attribute_len: int) -> None:
    sizes = churn(1500, attribute_len=attribute_len)
    assert max(sizes[1:]) <= 1.05 * sizes[1]
    assert sizes[-1] < 128_000


def test_an_attackers_device_never_pushes_out_a_trusted_one() -> None:
    profile = Profile(user_key="user")
    for i in range(MAX_DEVICES):
        learn(profile, obs_at(T0 + i * HOUR, device_id=f"d-{i}"), trusted=True)
    trusted = set(profile.devices)
    learn(profile, obs_at(T0 + DAY, LAGOS, device_id="d-attacker"), trusted=False)
    assert set(profile.devices) == trusted
    # A trusted newcomer still takes the slot of the least recently used device.
    learn(profile, obs_at(T0 + 2 * DAY, device_id="d-new-phone"), trusted=True)
    assert len(profile.devices) == MAX_DEVICES
    assert len(set(profile.devices) - trusted) == 1


def test_a_held_observation_round_trips_exactly() -> None:
    obs = obs_at(T0, LAGOS, device_id="d-held", action="transfer")
    assert obs.to_dict() == asdict(obs)
    assert Observation.from_dict(orjson.loads(orjson.dumps(obs.to_dict()))) == obs
