"""A targeted attacker's look-alike browser, through Engine.decide with the default
model and policy.

The attacker logs in from the victim's city on a look-alike of the victim's
browser, from a network the victim never used: the shipped policy steps that
login up at least (``lookalike_device``). Where a login on a look-alike is let through
(the victim's own network, say), the device is the user's in the profile, and
the payee added a minute later used to come from a "known" device. The device's
age says otherwise, and the shipped policy steps such money actions up.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from risk_engine.decision import Outcome
from risk_engine.geo import GeoLocator
from tests.behavior.test_decisions import LAPTOP, START, Harness

LOOK_ALIKE = {**LAPTOP, "id": "d-look-alike"}
ANOTHER_OSLO_IP = "212.62.246.25"  # Oslo, a network the user never used


@pytest.fixture(scope="module")
def geo() -> Iterator[GeoLocator]:
    locator = GeoLocator()
    yield locator
    locator.close()


def test_a_look_alike_login_from_a_network_never_seen_is_stopped(geo: GeoLocator) -> None:
    harness = Harness(geo)
    harness.usual_month()
    login = harness.decide(
        START + timedelta(days=31, hours=1),
        ip=ANOTHER_OSLO_IP,
        device=LOOK_ALIKE,
        session_id="s-x",
        pass_step_up=False,
    )
    # At least stepped up (the floor); the model may score it over the deny threshold.
    assert login.decision is not Outcome.ALLOW
    assert login.reasons[0].code == "lookalike_device"
    # The user's own laptop on that network is the user at a cafe.
    own = harness.decide(START + timedelta(days=31, hours=2), ip=ANOTHER_OSLO_IP)
    assert "lookalike_device" not in {r.code for r in own.reasons}


def test_a_payee_from_a_device_a_minute_old_is_stepped_up(geo: GeoLocator) -> None:
    harness = Harness(geo)
    harness.usual_month()
    login_at = START + timedelta(days=31, hours=1)
    login = harness.decide(login_at, device=LOOK_ALIKE, session_id="s-x")
    assert login.decision is Outcome.ALLOW
    payee = harness.decide(
        login_at + timedelta(minutes=1),
        action="add_payee",
        device=LOOK_ALIKE,
        session_id="s-x",
        payee="p-mule",
    )
    assert payee.decision is not Outcome.ALLOW
    details = {r.code: r.detail for r in payee.reasons}
    assert details["fresh_device"] == "add_payee on a device first seen 1 min ago"


def test_the_users_own_device_adds_a_payee_without_it(geo: GeoLocator) -> None:
    harness = Harness(geo)
    harness.usual_month()
    at = START + timedelta(days=31, hours=1)
    harness.decide(at, session_id="s-own")
    payee = harness.decide(
        at + timedelta(minutes=1), action="add_payee", session_id="s-own", payee="p-landlord"
    )
    assert "fresh_device" not in {r.code for r in payee.reasons}
