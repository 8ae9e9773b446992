"""Population familiarity through Engine.decide with the default GeoIP, model and policy.

A first visit to a network many other customers have succeeded from (an office)
in the user's own country is less risky than a first visit to a network nobody
here uses; a crowded network abroad and a credential-stuffing burst are still
stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from risk_engine.decision import Decision, Outcome
from risk_engine.engine import Scorer
from risk_engine.geo import GeoLocator
from risk_engine.policy import parse_policy
from tests.behavior.test_decisions import LAPTOP, START, STRANGER, Harness

OFFICE_IPS = ("212.62.247.25", "212.62.247.35", "212.62.247.225")  # Oslo, one /24
NOBODYS_IP = "212.62.246.25"  # Oslo, the same provider's block, another /24
SWEDISH_OFFICE_IPS = ("83.248.112.6", "83.248.112.110")  # Västra Frölunda, Sweden
WORK_DESKTOP = {
    **LAPTOP,
    "id": "d-work",
    "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
    "screen": "2560x1440",
}
# The day the crowd's history ends and the comparisons start.
DAY = 31


@pytest.fixture(scope="module")
def geo() -> Iterator[GeoLocator]:
    locator = GeoLocator()
    yield locator
    locator.close()


@pytest.fixture
def harness(geo: GeoLocator) -> Harness:
    return Harness(geo)


def colleagues(
    harness: Harness, ips: tuple[str, ...], prefix: str, tz_device: dict[str, str]
) -> None:
    """Eight other users succeed from ``ips`` on four different earlier days."""
    for i in range(8):
        harness.decide(
            START + timedelta(days=1 + i % 4, hours=1, minutes=i),
            user=f"{prefix}-{i}",
            ip=ips[i % len(ips)],
            device={**tz_device, "id": f"d-{prefix}-{i}"},
        )


def failed_logins(harness: Harness, start: datetime, ip: str, count: int) -> None:
    """``count`` strangers' failed logins from ``ip``, 20 s apart from ``start``."""
    for i in range(count):
        harness.decide(
            start + timedelta(seconds=20 * i),
            user=f"stuffed-{i}",
            ip=ip,
            device=STRANGER,
            success=False,
        )


def first_visit(harness: Harness, user: str, ip: str, device: dict[str, str]) -> Decision:
    harness.usual_month(user)
    return harness.decide(START + timedelta(days=DAY, hours=1), user=user, ip=ip, device=device)


def codes(decision: Decision) -> list[str]:
    return [r.code for r in decision.reasons]


def test_a_crowded_network_at_home_is_less_risky_than_nobodys(harness: Harness) -> None:
    colleagues(harness, OFFICE_IPS, "colleague", WORK_DESKTOP)
    office = first_visit(harness, "alice", OFFICE_IPS[0], WORK_DESKTOP)
    nobodys = first_visit(harness, "carol", NOBODYS_IP, WORK_DESKTOP)
    assert "crowded_network" in codes(office) and "new_network" not in codes(office)
    assert "new_network" in codes(nobodys) and "crowded_network" not in codes(nobodys)
    assert office.score < nobodys.score
    assert office.decision.rank <= nobodys.decision.rank
    assert office.decision is not Outcome.DENY


def test_a_crowded_network_abroad_is_still_new(harness: Harness) -> None:
    swedish = {**STRANGER, "timezone": "Europe/Stockholm", "language": "sv-SE"}
    colleagues(harness, SWEDISH_OFFICE_IPS, "svensk", swedish)
    abroad = first_visit(harness, "alice", SWEDISH_OFFICE_IPS[0], STRANGER)
    assert "new_country" in codes(abroad) and "crowded_network" not in codes(abroad)
    assert abroad.decision is not Outcome.ALLOW


def test_a_stuffing_burst_from_a_crowded_network_is_still_stopped(harness: Harness) -> None:
    colleagues(harness, OFFICE_IPS, "colleague", WORK_DESKTOP)
    harness.usual_month("alice")
    burst = START + timedelta(days=DAY, hours=3)
    failed_logins(harness, burst, OFFICE_IPS[0], 30)
    hit = harness.decide(
        burst + timedelta(minutes=11), user="alice", ip=OFFICE_IPS[0], device=STRANGER
    )
    assert "ip_burst" in codes(hit)
    assert hit.decision is not Outcome.ALLOW


def test_a_first_visit_to_a_crowded_network_at_home_is_stepped_up_never_denied(
    geo: GeoLocator,
) -> None:
    """Above the deny threshold, a crowd's network at home gets a challenge, not a block.

    A legitimate user's first morning at the office is new in every way (device, city,
    network); denied, the rest of the session is an untrusted device's too. A challenge
    lets a user with the second factor through; an attacker without it still fails.
    """
    harness = Harness(geo)
    colleagues(harness, OFFICE_IPS, "colleague", WORK_DESKTOP)
    harness.usual_month("alice")
    harness.usual_month("carol")
    # Only the first visits meet the strict thresholds: the histories are learned as usual.
    assert harness.engine.scorer is not None
    policy = harness.engine.scorer.policy.model_copy(deep=True)
    policy.classes["login"].step_up, policy.classes["login"].deny = 0.1, 0.2
    policy = parse_policy(policy.model_dump(mode="json"), "test")
    harness.engine.scorer = Scorer(harness.engine.scorer.artifact, policy)
    when = START + timedelta(days=DAY, hours=1)
    office = harness.decide(when, user="alice", ip=OFFICE_IPS[0], device=WORK_DESKTOP)
    nobodys = harness.decide(when, user="carol", ip=NOBODYS_IP, device=WORK_DESKTOP)
    assert office.score >= 0.2 and nobodys.score >= 0.2
    assert "crowded_network" in codes(office)
    assert office.decision is Outcome.STEP_UP
    assert nobodys.decision is Outcome.DENY


def test_failed_logins_on_a_crowded_network_take_its_benefit_of_the_doubt(
    harness: Harness,
) -> None:
    colleagues(harness, OFFICE_IPS, "colleague", WORK_DESKTOP)
    harness.usual_month("alice")
    burst = START + timedelta(days=DAY, hours=3)
    failed_logins(harness, burst, OFFICE_IPS[1], 3)
    hit = harness.decide(
        burst + timedelta(minutes=2), user="alice", ip=OFFICE_IPS[0], device=WORK_DESKTOP
    )
    assert "crowded_network" not in codes(hit)
