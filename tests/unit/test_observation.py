"""The observation's local time and time-zone mismatch, against a plain reference."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from risk_engine.events import parse_event
from risk_engine.features.observation import observe
from risk_engine.geo import Location
from risk_engine.privacy import Hasher

HASHER = Hasher("observation-tests-secret-0123456789")
# Zones with and without daylight saving, half and quarter hours, both sides of UTC
# and of the date line; "" and a bogus name stand for a missing or unusable zone.
ZONES = [
    "Europe/Oslo",
    "Europe/London",
    "GB",
    "America/New_York",
    "America/St_Johns",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
    "UTC",
    "",
    "Not/AZone",
]
# 2020 to 2030: every daylight-saving change of those years in between.
times = st.integers(1_577_836_800, 1_893_456_000).map(float)


def reference(ts: float, geo: str, device: str) -> tuple[int, float]:
    """(hour of week, mismatch in hours) as the features define them, step by step."""

    def tz(name: str) -> ZoneInfo | None:
        return ZoneInfo(name) if name in ZONES[:-2] else None

    geo_tz, dev_tz = tz(geo), tz(device)
    local_tz = geo_tz or dev_tz
    local = datetime.fromtimestamp(ts, local_tz) if local_tz else datetime.fromtimestamp(ts, UTC)
    mismatch = 0.0
    if geo_tz is not None and dev_tz is not None:
        hours = [
            (datetime.fromtimestamp(ts, z).utcoffset() or UTC.utcoffset(None)).total_seconds()
            / 3600.0
            for z in (geo_tz, dev_tz)
        ]
        mismatch = abs(hours[0] - hours[1])
        mismatch = min(mismatch, 24.0 - mismatch)
    return local.weekday() * 24 + local.hour, mismatch


@settings(max_examples=400, deadline=None)
@given(times, st.sampled_from(ZONES), st.sampled_from(ZONES))
def test_local_hour_and_mismatch_match_the_reference(ts: float, geo: str, device: str) -> None:
    data: dict[str, Any] = {
        "event_id": "e-1",
        "timestamp": datetime.fromtimestamp(ts, UTC).isoformat(),
        "user_id": "u",
        "action": "login",
        "ip": "81.2.69.160",
        "device": {"id": "d-1", "user_agent": "curl/8", "timezone": device},
        "success": True,
    }
    where = Location(known=True, country="NO", city="Oslo", time_zone=geo or None)
    obs = observe(parse_event(data), where, HASHER, HASHER.digest("user", "u"))
    hour, mismatch = reference(ts, geo, device)
    assert (obs.hour_of_week, obs.tz_mismatch_h) == (hour, mismatch)
    assert str(obs.tz_mismatch_h) == str(mismatch)  # 0.0, never -0.0
