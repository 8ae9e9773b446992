"""A payee from a device a minute old, through Engine.decide with the default model and policy.

A targeted attacker logs in from the victim's city on a look-alike browser; once
that login is let through, the device is the user's in the profile, and the payee
added a minute later used to come from a "known" device. The device's age says
otherwise, and the shipped policy steps such money actions up.
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


def test_a_payee_from_a_device_a_minute_old_is_stepped_up(geo: GeoLocator) -> None:
    harness = Harness(geo)
    harness.usual_month()
    login_at = START + timedelta(days=31, hours=1)
    harness.decide(login_at, ip=ANOTHER_OSLO_IP, device=LOOK_ALIKE, session_id="s-x")
    payee = harness.decide(
        login_at + timedelta(minutes=1),
        action="add_payee",
        ip=ANOTHER_OSLO_IP,
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
