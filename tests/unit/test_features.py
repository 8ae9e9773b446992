"""Signal semantics: hand-built observations with hand-made locations, one family at a time."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from risk_engine.events import parse_event
from risk_engine.features import device as device_features
from risk_engine.features import geo as geo_features
from risk_engine.features.action import amount_z
from risk_engine.features.common import (
    EARTH_RADIUS_KM,
    effective_distance_km,
    familiarity,
    haversine_km,
    regular,
    speed_kmh,
)
from risk_engine.features.learn import learn
from risk_engine.features.observation import Observation, observe
from risk_engine.features.registry import as_dict, compute_features
from risk_engine.geo import Location
from risk_engine.privacy import Hasher
from risk_engine.profiles.model import BurstCounts, Profile
from risk_engine.reasons import explain

HASHER = Hasher("feature-tests")
OSLO_TZ = ZoneInfo("Europe/Oslo")
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC).timestamp()  # a Monday
MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0

CHROME_WIN = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/{major}.0.0.0 Safari/537.36"
)
FIREFOX_WIN = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)


def desktop(
    major: int = 131, *, device_id: str | None = "d-laptop", **changes: Any
) -> dict[str, Any]:
    device: dict[str, Any] = {
        "user_agent": CHROME_WIN.format(major=major),
        "platform": "Win32",
        "timezone": "Europe/Oslo",
        "language": "nb-NO",
        "screen": "1920x1080",
    }
    if device_id is not None:
        device["id"] = device_id
    device.update(changes)
    return device


def place(
    city: str,
    country: str,
    lat: float,
    lon: float,
    *,
    accuracy_km: float = 10.0,
    tz: str | None = None,
    network: str = "AS2119",
) -> Location:
    return Location(
        known=True,
        country=country,
        city=city,
        latitude=lat,
        longitude=lon,
        accuracy_km=accuracy_km,
        time_zone=tz,
        network=network,
    )


OSLO = place("Oslo", "NO", 59.9127, 10.7461, tz="Europe/Oslo")
BERGEN = place("Bergen", "NO", 60.3913, 5.3221, tz="Europe/Oslo", network="AS2116")
TOKYO = place("Tokyo", "JP", 35.6895, 139.6917, tz="Asia/Tokyo", network="AS2516")
SYDNEY = place("Sydney", "AU", -33.8688, 151.2093, tz="Australia/Sydney", network="AS1221")

_counter = iter(range(10**9))


def obs_at(
    ts: float,
    where: Location = OSLO,
    *,
    device: dict[str, Any] | None = None,
    ip: str = "81.2.69.160",
    session_id: str | None = None,
    action: str = "login",
    amount: float | None = None,
    success: bool = True,
    user: str = "user",
) -> Observation:
    """An Observation built the engine's way: a validated Event, a Location, the Hasher."""
    data: dict[str, Any] = {
        "event_id": f"e-{next(_counter)}",
        "timestamp": datetime.fromtimestamp(ts, UTC).isoformat(),
        "user_id": user,
        "action": action,
        "ip": ip,
        "device": desktop() if device is None else device,
        "success": success,
    }
    if session_id is not None:
        data["session_id"] = session_id
    if amount is not None:
        data["amount"] = amount
    return observe(parse_event(data), where, HASHER, HASHER.digest("user", user))


def learned(*observations: Observation, trusted: bool = True) -> Profile:
    profile = Profile(user_key=HASHER.digest("user", "user"))
    for obs in observations:
        learn(profile, obs, trusted=trusted)
    return profile


def features(
    profile: Profile, obs: Observation, bursts: BurstCounts | None = None
) -> dict[str, float]:
    return as_dict(compute_features(profile, bursts or BurstCounts(), obs))


def usual_history(days: int = 30) -> list[Observation]:
    """Two logins a day, 08:xx and 19:xx Oslo time, same laptop, same address."""
    out = []
    for day in range(days):
        for hour in (8, 19):
            local = datetime(2026, 2, 1, hour, 10 + day % 20, tzinfo=OSLO_TZ) + timedelta(days=day)
            out.append(obs_at(local.timestamp(), session_id=f"s-{day}-{hour}"))
    return out


# -- travel -----------------------------------------------------------------------------

lats = st.floats(min_value=-89.0, max_value=89.0)
lons = st.floats(min_value=-179.0, max_value=179.0)
radii = st.floats(min_value=0.0, max_value=500.0)
gaps = st.floats(min_value=0.0, max_value=30 * DAY)


def somewhere(lat: float, lon: float, accuracy_km: float = 10.0) -> Location:
    # No city: a destination that is no familiar city of the user.
    return Location(
        known=True, country="XX", latitude=lat, longitude=lon, accuracy_km=accuracy_km, network="N"
    )


@settings(max_examples=100, deadline=None)
@given(lat=lats, lon=lons, radius=radii, gap=gaps)
def test_speed_is_zero_for_the_same_place(
    lat: float, lon: float, radius: float, gap: float
) -> None:
    here = somewhere(lat, lon, radius)
    profile = learned(obs_at(T0, here))
    values = features(profile, obs_at(T0 + gap, here))
    assert values["travel_log_km"] == 0.0
    assert values["speed_log_kmh"] == 0.0
    assert values["impossible_travel"] == 0.0


@settings(max_examples=150, deadline=None)
@given(lat1=lats, lon1=lons, lat2=lats, lon2=lons, gap1=gaps, extra=gaps)
def test_a_longer_gap_never_raises_the_speed(
    lat1: float, lon1: float, lat2: float, lon2: float, gap1: float, extra: float
) -> None:
    profile = learned(obs_at(T0, somewhere(lat1, lon1)))
    sooner = features(profile, obs_at(T0 + gap1, somewhere(lat2, lon2)))
    later = features(profile, obs_at(T0 + gap1 + extra, somewhere(lat2, lon2)))
    assert later["speed_log_kmh"] <= sooner["speed_log_kmh"] + 1e-12
    assert later["impossible_travel"] <= sooner["impossible_travel"]
    assert later["travel_log_km"] == pytest.approx(sooner["travel_log_km"])


@settings(max_examples=150, deadline=None)
@given(lat1=lats, lon1=lons, acc1=radii, lat2=lats, lon2=lons, acc2=radii)
def test_effective_distance_subtracts_both_radii(
    lat1: float, lon1: float, acc1: float, lat2: float, lon2: float, acc2: float
) -> None:
    raw = haversine_km(lat1, lon1, lat2, lon2)
    effective = effective_distance_km(lat1, lon1, acc1, lat2, lon2, acc2)
    assert effective == pytest.approx(max(0.0, raw - acc1 - acc2), abs=1e-9)
    assert 0.0 <= effective <= raw
    if raw <= acc1 + acc2:
        # Within the fixes' error: never travel, however short the gap.
        profile = learned(obs_at(T0, somewhere(lat1, lon1, acc1)))
        values = features(profile, obs_at(T0 + 1.0, somewhere(lat2, lon2, acc2)))
        assert values["impossible_travel"] == 0.0
        assert values["speed_log_kmh"] == 0.0


def north_of(lat: float, km: float) -> float:
    return lat + km / (math.pi * EARTH_RADIUS_KM / 180.0)


@pytest.mark.parametrize(("km", "radius"), [(300.0, 200.0), (500.0, 250.0), (1000.0, 500.0)])
def test_coarse_fixes_never_fake_impossible_travel(km: float, radius: float) -> None:
    far = north_of(50.0, km)
    assert haversine_km(50.0, 10.0, far, 10.0) == pytest.approx(km, abs=0.5)
    coarse = learned(obs_at(T0, somewhere(50.0, 10.0, radius)))
    values = features(coarse, obs_at(T0 + 5 * MINUTE, somewhere(far, 10.0, radius)))
    assert values["impossible_travel"] == 0.0
    assert values["travel_log_km"] == pytest.approx(0.0, abs=1e-6)
    # The same two places with precise fixes are impossible to reach in five minutes.
    precise = learned(obs_at(T0, somewhere(50.0, 10.0, 1.0)))
    if km - 2.0 > geo_features.IMPOSSIBLE_MIN_KM:
        moved = features(precise, obs_at(T0 + 5 * MINUTE, somewhere(far, 10.0, 1.0)))
        assert moved["impossible_travel"] == 1.0


def test_precise_fixes_far_apart_minutes_later_are_impossible_travel() -> None:
    values = features(learned(obs_at(T0, OSLO)), obs_at(T0 + 30 * MINUTE, TOKYO))
    assert values["impossible_travel"] == 1.0
    assert values["speed_log_kmh"] > math.log1p(geo_features.IMPOSSIBLE_KMH)
    assert math.expm1(values["travel_log_km"]) == pytest.approx(
        haversine_km(OSLO.latitude, OSLO.longitude, TOKYO.latitude, TOKYO.longitude) - 20.0,
        rel=1e-6,
    )


def test_a_plane_trip_is_possible_travel() -> None:
    values = features(learned(obs_at(T0, OSLO)), obs_at(T0 + 14 * HOUR, TOKYO))
    assert values["impossible_travel"] == 0.0
    assert 0.0 < math.expm1(values["speed_log_kmh"]) < geo_features.IMPOSSIBLE_KMH


def test_short_hop_is_never_impossible_even_if_fast() -> None:
    # Oslo-Bergen (~300 km) in a minute is fast, but still within GeoIP error when radii count.
    near = place("Drammen", "NO", 59.7439, 10.2045, accuracy_km=10.0)
    values = features(learned(obs_at(T0, OSLO)), obs_at(T0 + MINUTE, near))
    assert values["impossible_travel"] == 0.0


def test_unknown_location_has_no_travel() -> None:
    unknown = Location(known=False, network="10.0.0.0/24", is_private=True)
    values = features(learned(obs_at(T0, OSLO)), obs_at(T0 + MINUTE, unknown, ip="10.0.0.1"))
    assert values["geo_unknown"] == 1.0
    assert values["travel_log_km"] == 0.0 and values["impossible_travel"] == 0.0


def test_speed_kmh_counts_short_gaps_as_a_minute() -> None:
    assert speed_kmh(10.0, 0.0) == speed_kmh(10.0, 60.0) == 600.0
    assert speed_kmh(0.0, 0.0) == 0.0


# -- places -----------------------------------------------------------------------------


def test_new_country_and_network_only_with_history() -> None:
    cold = features(Profile(user_key="u"), obs_at(T0, TOKYO))
    assert cold["new_country"] == 0.0
    assert cold["new_network"] == 0.0
    assert cold["new_city"] == 0.0
    assert cold["new_ip"] == 0.0

    home = learned(*[obs_at(T0 + i * HOUR) for i in range(5)])
    abroad = features(home, obs_at(T0 + 30 * DAY, TOKYO, ip="175.16.199.1"))
    assert abroad["new_country"] == 1.0
    assert abroad["new_city"] == 1.0
    assert abroad["new_network"] == 1.0
    assert abroad["new_ip"] == 1.0

    same_country = features(home, obs_at(T0 + 30 * DAY, BERGEN, ip="89.160.20.112"))
    assert same_country["new_country"] == 0.0
    assert same_country["new_city"] == 1.0
    assert same_country["new_network"] == 1.0

    at_home = features(home, obs_at(T0 + 30 * DAY))
    assert at_home["new_country"] == at_home["new_network"] == at_home["new_ip"] == 0.0


def test_untrusted_history_gives_no_new_place_flags() -> None:
    # Events that were never trusted taught nothing: still a cold start for places.
    profile = learned(*[obs_at(T0 + i * HOUR) for i in range(5)], trusted=False)
    values = features(profile, obs_at(T0 + DAY, TOKYO))
    assert values["new_country"] == 0.0


def test_witten_bell_familiarity() -> None:
    assert familiarity({"NO": [9.0, 0.0], "SE": [1.0, 0.0]}, "NO") == pytest.approx(9 / 12)
    assert familiarity({"NO": [9.0, 0.0], "SE": [1.0, 0.0]}, "SE") == pytest.approx(1 / 12)
    assert familiarity({"NO": [9.0, 0.0]}, "JP") == 0.0
    assert familiarity({}, "NO") == 0.0


def test_places_are_as_familiar_as_the_most_seen_one() -> None:
    assert regular({"NO": [9.0, 0.0], "SE": [1.0, 0.0]}, "NO") == pytest.approx(9 / 11)
    assert regular({"NO": [9.0, 0.0], "SE": [1.0, 0.0]}, "SE") == pytest.approx(1 / 11)
    assert regular({"NO": [9.0, 0.0]}, "JP") == 0.0
    assert regular({}, "NO") == 0.0

    profile = learned(*[obs_at(T0 + i * HOUR) for i in range(3)], obs_at(T0 + 4 * HOUR, BERGEN))
    # 3 Oslo + 1 Bergen, both NO: NO = 4 / (4 + 1); Oslo = 3 / (3 + 2); Bergen 1 / (3 + 2).
    values = features(profile, obs_at(T0 + DAY))
    assert values["country_familiarity"] == pytest.approx(4 / 5)
    assert values["city_familiarity"] == pytest.approx(3 / 5)
    assert features(profile, obs_at(T0 + DAY, BERGEN))["city_familiarity"] == pytest.approx(1 / 5)
    assert features(profile, obs_at(T0 + DAY, TOKYO))["city_familiarity"] == 0.0


def test_a_user_of_three_places_is_at_home_in_each() -> None:
    """A VPN rotating over three exit countries: each as familiar as one home is.

    Witten-Bell's share gave each a third of a one-country user's familiarity, and
    the deployment flow challenged such users for it (no reason to show them).
    """
    rotating = learned(*[obs_at(T0 + i * HOUR, (OSLO, TOKYO, BERGEN)[i % 3]) for i in range(30)])
    home = learned(*[obs_at(T0 + i * HOUR) for i in range(10)])
    at_home = features(home, obs_at(T0 + DAY))["city_familiarity"]
    for place in (OSLO, TOKYO, BERGEN):
        value = features(rotating, obs_at(T0 + DAY, place))["city_familiarity"]
        assert value == pytest.approx(10 / 13)
        assert value > 0.75 * at_home
    # A place seen once among them stays rare.
    once = learned(*[obs_at(T0 + i * HOUR) for i in range(10)], obs_at(T0 + 11 * HOUR, TOKYO))
    assert features(once, obs_at(T0 + DAY, TOKYO))["city_familiarity"] == pytest.approx(1 / 12)


def test_a_place_the_user_often_comes_from_is_familiar_however_much_more_home_is() -> None:
    """A user at home most days who now and then goes through a VPN exit abroad.

    Against home's count, the exit country seen forty times in a year was a tenth as
    familiar as home, and the deployment flow challenged such users' balance views
    for it (no reason to show them). Seen REGULAR_COUNT times or more, a place is as
    familiar as any of the user's own; below that, it is measured against no more
    than REGULAR_COUNT, so a place seen once stays rare.
    """
    counter = {"NO": [350.0, 0.0], "SE": [40.0, 0.0], "DK": [3.0, 0.0], "FI": [1.0, 0.0]}
    assert regular(counter, "NO") == pytest.approx(350 / 354)
    assert regular(counter, "SE") == pytest.approx(40 / 44)
    assert regular(counter, "DK") == pytest.approx(3 / 14)
    assert regular(counter, "FI") == pytest.approx(1 / 14)
    assert regular(counter, "JP") == 0.0
    # Under REGULAR_COUNT events in all, nothing changes: the top is the measure.
    assert regular({"NO": [9.0, 0.0], "SE": [1.0, 0.0]}, "SE") == pytest.approx(1 / 11)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=4), st.integers(1, 1000), min_size=1, max_size=20))
def test_familiarity_leaves_mass_for_the_unseen(counts: dict[str, int]) -> None:
    counter = {key: [float(n), 0.0] for key, n in counts.items()}
    seen = sum(familiarity(counter, key) for key in counter)
    unseen = len(counter) / (sum(counts.values()) + len(counter))
    assert seen + unseen == pytest.approx(1.0)
    ranked = sorted(counter, key=lambda k: counts[k])
    values = [familiarity(counter, k) for k in ranked]
    assert values == sorted(values)  # more often seen, more familiar


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=4), st.integers(1, 1000), min_size=1, max_size=20))
def test_regular_is_monotone_and_never_below_the_share(counts: dict[str, int]) -> None:
    counter = {key: [float(n), 0.0] for key, n in counts.items()}
    ranked = sorted(counter, key=lambda k: counts[k])
    values = [regular(counter, k) for k in ranked]
    assert values == sorted(values)  # more often seen, more regular
    assert all(0.0 < v < 1.0 for v in values)  # some room is always left for the unseen
    for key in counter:
        assert regular(counter, key) >= familiarity(counter, key)


def test_anonymous_ip_flag() -> None:
    anonymous = Location(
        known=True,
        country="NO",
        city="Oslo",
        latitude=59.9127,
        longitude=10.7461,
        accuracy_km=10.0,
        network="AS9009",
        is_anonymous=True,
    )
    assert features(Profile(user_key="u"), obs_at(T0, anonymous))["anonymous_ip"] == 1.0
    assert features(Profile(user_key="u"), obs_at(T0, OSLO))["anonymous_ip"] == 0.0


# -- device -----------------------------------------------------------------------------


def drift_to(new_device: dict[str, Any], old_device: dict[str, Any] | None = None) -> float:
    profile = learned(obs_at(T0, device=old_device or desktop()))
    record, _, drift = device_features.match(profile, obs_at(T0 + DAY, device=new_device))
    assert record is not None
    return drift


def test_identical_device_has_no_drift() -> None:
    assert drift_to(desktop()) == 0.0
    values = features(learned(obs_at(T0)), obs_at(T0 + DAY))
    assert values["device_known"] == 1.0
    assert values["device_drift"] == 0.0
    assert values["device_new"] == values["device_similar"] == values["device_untrusted"] == 0.0


def test_browser_major_bump_is_mild() -> None:
    assert 0.0 < drift_to(desktop(132)) < 0.1
    assert 0.0 < drift_to(desktop(133)) < 0.1


def test_browser_downgrade_or_jump_is_more_than_a_bump() -> None:
    assert drift_to(desktop(120)) > drift_to(desktop(132))
    assert drift_to(desktop(140)) > drift_to(desktop(132))


@pytest.mark.parametrize(
    "changed",
    [
        desktop(user_agent=FIREFOX_WIN),  # another browser family
        desktop(user_agent=CHROME_MAC),  # another OS
    ],
    ids=["family", "os"],
)
def test_browser_family_or_os_change_is_strong(changed: dict[str, Any]) -> None:
    assert drift_to(changed) >= 0.4


def test_unknown_attributes_are_no_evidence_of_change() -> None:
    sparse = {"id": "d-laptop"}
    assert drift_to(sparse) == 0.0


def test_cleared_cookie_is_a_similar_device_not_a_new_one() -> None:
    profile = learned(*[obs_at(T0 + i * DAY) for i in range(5)])
    values = features(profile, obs_at(T0 + 6 * DAY, device=desktop(device_id="d-fresh-cookie")))
    assert values["device_similar"] == 1.0
    assert values["device_new"] == 0.0
    assert values["device_known"] == 0.0
    assert values["device_drift"] == 0.0


def test_cleared_cookie_after_a_browser_update_is_still_similar() -> None:
    profile = learned(*[obs_at(T0 + i * DAY) for i in range(5)])
    values = features(profile, obs_at(T0 + 6 * DAY, device=desktop(132, device_id="d-new")))
    assert values["device_similar"] == 1.0
    assert values["device_new"] == 0.0


def test_a_different_device_is_new() -> None:
    profile = learned(*[obs_at(T0 + i * DAY) for i in range(5)])
    phone = {
        "id": "d-phone",
        "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
        "platform": "iPhone",
        "timezone": "Asia/Shanghai",
        "language": "zh-CN",
        "screen": "390x844",
    }
    values = features(profile, obs_at(T0 + 6 * DAY, device=phone))
    assert values["device_new"] == 1.0
    assert values["device_similar"] == 0.0
    assert values["device_known"] == 0.0
    assert values["device_drift"] >= 0.4


def test_first_device_of_a_new_user_is_not_flagged_new() -> None:
    values = features(Profile(user_key="u"), obs_at(T0))
    assert values["device_new"] == 0.0
    assert values["device_known"] == 0.0


def test_device_seen_only_in_untrusted_events_is_untrusted() -> None:
    profile = learned(obs_at(T0, device=desktop(device_id="d-attacker")), trusted=False)
    values = features(profile, obs_at(T0 + HOUR, device=desktop(device_id="d-attacker")))
    assert values["device_untrusted"] == 1.0
    assert values["device_known"] == 0.0


def test_a_device_allowed_a_minute_ago_is_a_minute_old() -> None:
    """An attacker's look-alike browser, let in at login, is "known" a minute later.

    Every earlier signal then read the payee added from it as the user's own device;
    its age still says it has been the user's for a minute.
    """
    look_alike = desktop(device_id="d-look-alike")
    profile = learned(
        *[obs_at(T0 + i * DAY) for i in range(20)], obs_at(T0 + 20 * DAY, device=look_alike)
    )
    payee = obs_at(T0 + 20 * DAY + 60, device=look_alike, action="add_payee")
    values = features(profile, payee)
    assert values["device_known"] == 1.0
    assert values["device_age_log_h"] == pytest.approx(math.log1p(1 / 60))
    vector = compute_features(profile, BurstCounts(), payee)
    found = {r.code: r.detail for r in explain(profile, BurstCounts(), payee, vector)}
    assert found["fresh_device"] == "add_payee on a device first seen 1 min ago"
    # The user's own laptop is twenty days old: no such reason, and its age says so.
    own = obs_at(T0 + 20 * DAY + 60, action="add_payee")
    own_values = features(profile, own)
    assert own_values["device_age_log_h"] == pytest.approx(math.log1p(20 * 24 + 1 / 60))
    own_vector = compute_features(profile, BurstCounts(), own)
    assert "fresh_device" not in {r.code for r in explain(profile, BurstCounts(), own, own_vector)}
    # A fresh device reading the balance is worded nowhere: only money and account actions.
    read = obs_at(T0 + 20 * DAY + 60, device=look_alike, action="view_account")
    assert "fresh_device" not in {
        r.code
        for r in explain(
            profile, BurstCounts(), read, compute_features(profile, BurstCounts(), read)
        )
    }
    # A new customer's devices of the first weeks are their own setting in: a laptop
    # beside the phone a week in is not a stranger's.
    newcomer = learned(
        *[obs_at(T0 + i * DAY) for i in range(7)], obs_at(T0 + 7 * DAY, device=look_alike)
    )
    laptop = obs_at(T0 + 7 * DAY + 60, device=look_alike, action="add_payee")
    assert "fresh_device" not in {
        r.code
        for r in explain(
            newcomer, BurstCounts(), laptop, compute_features(newcomer, BurstCounts(), laptop)
        )
    }


def test_missing_device_information() -> None:
    values = features(Profile(user_key="u"), obs_at(T0, device={}))
    assert values["device_missing"] == 1.0
    assert features(Profile(user_key="u"), obs_at(T0))["device_missing"] == 0.0


def test_time_zone_mismatch_between_device_and_address() -> None:
    tokyo_device = desktop(timezone="Asia/Tokyo")
    # Oslo is UTC+1 in March 2026 (before DST), Tokyo UTC+9.
    assert features(Profile(user_key="u"), obs_at(T0, device=tokyo_device))[
        "tz_mismatch_h"
    ] == pytest.approx(8.0)
    assert features(Profile(user_key="u"), obs_at(T0))["tz_mismatch_h"] == 0.0


# -- time -------------------------------------------------------------------------------


def test_habitual_hours_are_more_familiar_than_3am() -> None:
    profile = learned(*usual_history())
    next_day = datetime(2026, 3, 3, tzinfo=OSLO_TZ)
    usual = features(profile, obs_at((next_day + timedelta(hours=8, minutes=20)).timestamp()))
    night = features(profile, obs_at((next_day + timedelta(hours=3)).timestamp()))
    assert usual["hour_of_week_familiarity"] > 3 * night["hour_of_week_familiarity"]
    assert usual["hour_of_day_familiarity"] > 3 * night["hour_of_day_familiarity"]
    assert usual["hour_of_day_familiarity"] > 1.0 > night["hour_of_day_familiarity"]


def test_hours_are_local_to_the_address() -> None:
    # 08:20 in Oslo is 16:20 in Tokyo: the same instant is a different local hour.
    instant = datetime(2026, 3, 3, 8, 20, tzinfo=OSLO_TZ).timestamp()
    assert obs_at(instant).hour_of_week % 24 == 8
    assert obs_at(instant, TOKYO).hour_of_week % 24 == 16


def test_gap_since_last_seen() -> None:
    profile = learned(obs_at(T0))
    assert features(profile, obs_at(T0 + 9 * DAY))["gap_log_days"] == pytest.approx(math.log1p(9))
    assert features(Profile(user_key="u"), obs_at(T0))["gap_log_days"] == 0.0


# -- action -----------------------------------------------------------------------------


def transfers(amounts: list[float]) -> Profile:
    return learned(
        *[obs_at(T0 + i * DAY, action="transfer", amount=a) for i, a in enumerate(amounts)]
    )


def test_amount_robust_z_is_large_for_a_hundredfold_amount() -> None:
    profile = transfers([40.0, 55.0, 50.0, 45.0, 60.0, 52.0, 48.0])
    huge = features(profile, obs_at(T0 + 10 * DAY, action="transfer", amount=5000.0))
    usual = features(profile, obs_at(T0 + 10 * DAY, action="transfer", amount=50.0))
    assert huge["amount_z"] >= 5.0
    assert abs(usual["amount_z"]) < 1.0
    assert huge["amount_log"] == pytest.approx(math.log1p(5000.0))


def test_amount_z_needs_a_history_and_an_amount() -> None:
    assert amount_z([], 5000.0) == 0.0
    assert amount_z([math.log1p(50.0)] * 2, 5000.0) == 0.0
    assert amount_z([math.log1p(50.0)] * 5, None) == 0.0
    assert features(transfers([50.0] * 5), obs_at(T0 + 9 * DAY))["amount_log"] == 0.0


@settings(max_examples=100, deadline=None)
@given(
    history=st.lists(st.floats(0.0, 1e6), min_size=3, max_size=64),
    a=st.floats(0.0, 1e9),
    b=st.floats(0.0, 1e9),
)
def test_amount_z_is_bounded_and_monotone(history: list[float], a: float, b: float) -> None:
    logs = [math.log1p(x) for x in history]
    za, zb = amount_z(logs, a), amount_z(logs, b)
    assert -10.0 <= za <= 10.0
    if a <= b:
        assert za <= zb


def test_action_sensitivity_and_account_changes() -> None:
    fresh = Profile(user_key="u")
    view = features(fresh, obs_at(T0, action="view_account"))
    mfa = features(fresh, obs_at(T0, action="change_mfa"))
    other = features(fresh, obs_at(T0, action="approve_invoice"))
    assert view["action_sensitivity"] < mfa["action_sensitivity"]
    assert mfa["account_change"] == 1.0 and view["account_change"] == 0.0
    assert 0.0 < other["action_sensitivity"] < 1.0


def test_action_familiarity() -> None:
    profile = learned(*[obs_at(T0 + i * HOUR, action="view_account") for i in range(4)])
    assert features(profile, obs_at(T0 + DAY, action="view_account"))[
        "action_familiarity"
    ] == pytest.approx(4 / 5)
    assert features(profile, obs_at(T0 + DAY, action="change_email"))["action_familiarity"] == 0.0


# -- session ----------------------------------------------------------------------------


def test_session_moving_continents_in_minutes_is_hijack_evidence() -> None:
    profile = learned(obs_at(T0, session_id="s-1"))
    hijack = features(
        profile,
        obs_at(
            T0 + 10 * MINUTE,
            SYDNEY,
            ip="1.128.0.1",
            session_id="s-1",
            device=desktop(device_id="d-evil"),
        ),
    )
    assert hijack["session_known"] == 1.0
    assert hijack["session_ip_changed"] == 1.0
    assert hijack["session_device_changed"] == 1.0
    assert math.expm1(hijack["session_speed_log_kmh"]) > 10_000.0


def test_session_continuing_from_the_same_place() -> None:
    profile = learned(obs_at(T0, session_id="s-1"))
    same = features(profile, obs_at(T0 + 5 * MINUTE, session_id="s-1"))
    assert same["session_known"] == 1.0
    assert same["session_ip_changed"] == 0.0
    assert same["session_device_changed"] == 0.0
    assert same["session_speed_log_kmh"] == 0.0
    # Another address in the same network: a half change (mobile carriers rotate addresses).
    churn = features(profile, obs_at(T0 + 5 * MINUTE, ip="81.2.69.161", session_id="s-1"))
    assert churn["session_ip_changed"] == 0.5


def test_unknown_session_gives_zeros() -> None:
    profile = learned(obs_at(T0, session_id="s-1"))
    values = features(profile, obs_at(T0 + MINUTE, TOKYO, session_id="s-other"))
    assert values["session_known"] == 0.0
    assert values["session_ip_changed"] == 0.0
    assert values["session_speed_log_kmh"] == 0.0


# -- velocity ---------------------------------------------------------------------------


def test_failed_logins_are_counted_within_the_hour() -> None:
    failures = [obs_at(T0 + i * MINUTE, success=False) for i in range(4)]
    old_failure = obs_at(T0 - 2 * HOUR, success=False)
    profile = learned(old_failure, *failures, trusted=False)
    values = features(profile, obs_at(T0 + 10 * MINUTE, success=False))
    assert values["login_failed"] == 1.0
    assert values["user_failures_1h"] == pytest.approx(math.log1p(4))
    assert values["user_events_1h"] == pytest.approx(math.log1p(4))
    assert features(profile, obs_at(T0 + 10 * MINUTE))["login_failed"] == 0.0


def test_failed_non_login_actions_are_not_login_failures() -> None:
    profile = learned(*[obs_at(T0, action="transfer", success=False) for _ in range(3)])
    assert features(profile, obs_at(T0 + MINUTE))["user_failures_1h"] == 0.0


def test_bursts_come_from_the_burst_counts() -> None:
    bursts = BurstCounts(ip_users=7, ip_failures=20, network_users=30, network_failures=50)
    values = features(Profile(user_key="u"), obs_at(T0), bursts)
    assert values["ip_users_1h"] == pytest.approx(math.log1p(7))
    assert values["ip_failures_1h"] == pytest.approx(math.log1p(20))
    assert values["network_users_1h"] == pytest.approx(math.log1p(30))
    assert values["network_failures_1h"] == pytest.approx(math.log1p(50))
    quiet = features(Profile(user_key="u"), obs_at(T0))
    assert quiet["ip_users_1h"] == quiet["network_failures_1h"] == 0.0


# -- maturity ---------------------------------------------------------------------------


def test_maturity_counts_trusted_events_and_days() -> None:
    profile = learned(*[obs_at(T0 + i * DAY) for i in range(10)])
    values = features(profile, obs_at(T0 + 20 * DAY))
    assert values["history_log_events"] == pytest.approx(math.log1p(10))
    assert values["history_log_days"] == pytest.approx(math.log1p(20))
    fresh = features(Profile(user_key="u"), obs_at(T0))
    assert fresh["history_log_events"] == fresh["history_log_days"] == 0.0


# -- network families ---------------------------------------------------------------------


def carrier(ip: str, where: Location = OSLO) -> Observation:
    """An event from a phone on a carrier without an ASN database: the network is the /24."""
    prefix = ".".join(ip.split(".")[:3]) + ".0/24"
    located = Location(
        known=True,
        country=where.country,
        city=where.city,
        latitude=where.latitude,
        longitude=where.longitude,
        accuracy_km=where.accuracy_km,
        time_zone=where.time_zone,
        network=prefix,
    )
    return obs_at(T0 + 40 * DAY, located, ip=ip)


def test_a_phone_hopping_carrier_addresses_in_its_city_is_on_a_known_network() -> None:
    hops = [f"176.11.{third}.{20 + i}" for i, third in enumerate((104, 107, 109, 111, 115))]
    profile = learned(*[replace(carrier(ip), ts=T0 + i * HOUR) for i, ip in enumerate(hops)])
    assert carrier("176.11.120.9").network_family == "176.11.0.0/16@NO/Oslo"
    nowhere_in_norway = Location(known=True, country="NO", latitude=62.0, longitude=10.0)

    hop = features(profile, carrier("176.11.120.9"))
    assert hop["new_ip"] == 1.0
    assert hop["new_network"] == 0.0
    assert hop["network_familiarity"] > 0.5
    # Five addresses in five events: a new address is this user's habit.
    assert hop["ip_novelty"] == pytest.approx(0.5)

    # GeoIP places some of a carrier's blocks only in the country: the same family.
    country_only = carrier("176.11.120.9", nowhere_in_norway)
    assert country_only.network_family == "176.11.0.0/16@NO/"
    assert features(profile, country_only)["new_network"] == 0.0

    # The same block in another city, or another block in the same city, is new.
    assert features(profile, carrier("176.11.120.9", BERGEN))["new_network"] == 1.0
    assert features(profile, carrier("84.208.20.110"))["new_network"] == 1.0


def test_with_an_asn_database_the_family_is_the_asn() -> None:
    with_asn = Location(known=True, country="NO", city="Oslo", network="AS2119", asn=2119)
    assert obs_at(T0, with_asn).network_family == "AS2119"


def test_profiles_without_families_keep_their_networks_familiar() -> None:
    profile = learned(*[obs_at(T0 + i * HOUR) for i in range(5)])
    profile.families.clear()  # as stored before families existed
    values = features(profile, obs_at(T0 + DAY))
    assert values["new_network"] == 0.0
    assert values["network_familiarity"] == pytest.approx(5 / 6)
    assert values["network_novelty"] == pytest.approx(1 / 6)


def test_crowds_count_only_on_networks_new_to_the_user() -> None:
    bursts = BurstCounts(ip_users=40, ip_failures=2, network_users=300, network_failures=3)
    office = learned(*[obs_at(T0 + i * HOUR) for i in range(5)])
    at_work = features(office, obs_at(T0 + DAY), bursts)
    # As if the user were alone there, as a user who mistyped a password at home is.
    assert at_work["ip_users_1h"] == at_work["network_users_1h"] == pytest.approx(math.log1p(1))
    alone = features(office, obs_at(T0 + DAY), BurstCounts(ip_users=1, network_users=1))
    assert alone["ip_users_1h"] == at_work["ip_users_1h"]
    # Failures count everywhere: stuffing through an office is still stuffing.
    assert at_work["ip_failures_1h"] == pytest.approx(math.log1p(2))
    elsewhere = features(office, obs_at(T0 + DAY, TOKYO, ip="175.16.199.1"), bursts)
    assert elsewhere["ip_users_1h"] == pytest.approx(math.log1p(40))
    assert elsewhere["network_users_1h"] == pytest.approx(math.log1p(300))


NEW_YORK = place("New York", "US", 40.7128, -74.0060, tz="America/New_York", network="AS9009")


def test_a_vpn_user_at_the_usual_exit_neither_travels_nor_mismatches() -> None:
    exit_ip = "89.187.178.20"
    home = [obs_at(T0 + i * HOUR) for i in range(4)]
    first = obs_at(T0 + 5 * HOUR, NEW_YORK, ip=exit_ip)
    # The first time through the exit: far away, the device clock six hours off.
    values = features(learned(*home), first)
    assert values["travel_log_km"] > math.log1p(5000)
    assert values["tz_mismatch_h"] == pytest.approx(6.0)

    habit = learned(*home, first, obs_at(T0 + 6 * HOUR, NEW_YORK, ip=exit_ip), obs_at(T0 + DAY))
    again = features(habit, obs_at(T0 + 2 * DAY, NEW_YORK, ip="89.187.178.77"))
    assert again["travel_log_km"] == again["speed_log_kmh"] == 0.0
    assert again["tz_mismatch_h"] == 0.0
    assert again["new_network"] == again["new_country"] == 0.0
    # Another network in that city is no habit: the mismatch still counts.
    other = features(habit, obs_at(T0 + 2 * DAY, NEW_YORK, ip="23.45.67.89"))
    assert other["tz_mismatch_h"] == pytest.approx(6.0)


OFFICE_CROWD = BurstCounts(crowd_users=12, crowd_days=6)


def test_a_crowded_network_in_the_users_country_is_no_new_network() -> None:
    home = learned(*[obs_at(T0 + i * HOUR) for i in range(5)])
    office = obs_at(T0 + DAY, BERGEN, ip="176.11.120.9")
    alone = features(home, office)
    crowded = features(home, office, OFFICE_CROWD)
    assert alone["new_network"] == 1.0 and alone["network_familiarity"] == 0.0
    assert crowded["new_network"] == 0.0
    # As familiar as a network seen once, and no more.
    assert (
        0.0
        < crowded["network_familiarity"]
        < features(home, obs_at(T0 + DAY))["network_familiarity"]
    )
    # The city is still new: only the network's novelty is the crowd's to lift.
    assert crowded["new_city"] == alone["new_city"] == 1.0


def test_a_crowd_is_as_familiar_as_a_network_seen_once_in_a_profile_without_families() -> None:
    """A profile stored before network families has none: its networks stand in for them.

    Measured against an empty family map, the crowd's "seen once" came out fully
    familiar (1.0), more than the user's own home network.
    """
    home = learned(*[obs_at(T0 + i * HOUR) for i in range(5)])
    home.families.clear()
    office = obs_at(T0 + DAY, BERGEN, ip="176.11.120.9")
    crowded = features(home, office, OFFICE_CROWD)["network_familiarity"]
    own = features(home, obs_at(T0 + DAY))["network_familiarity"]
    assert 0.0 < crowded < own
    assert crowded == pytest.approx(1 / (5 + 0 + 1))  # the top network seen 5 times, no families


@pytest.mark.parametrize(
    "crowd",
    [
        BurstCounts(crowd_users=4, crowd_days=4),  # a household or two
        BurstCounts(crowd_users=30, crowd_days=2),  # a burst on two days, no habit
    ],
)
def test_a_small_or_young_crowd_is_no_crowd(crowd: BurstCounts) -> None:
    home = learned(*[obs_at(T0 + i * HOUR) for i in range(5)])
    assert features(home, obs_at(T0 + DAY, BERGEN, ip="176.11.120.9"), crowd)["new_network"] == 1.0


def test_a_crowded_network_abroad_stays_new() -> None:
    home = learned(*[obs_at(T0 + i * HOUR) for i in range(5)])
    abroad = features(home, obs_at(T0 + DAY, TOKYO, ip="175.16.199.1"), OFFICE_CROWD)
    assert abroad["new_network"] == abroad["new_country"] == 1.0
    assert abroad["network_familiarity"] == 0.0


def test_a_crowded_network_is_shared_but_its_failures_count() -> None:
    home = learned(*[obs_at(T0 + i * HOUR) for i in range(5)])
    busy = BurstCounts(
        ip_users=25,
        ip_failures=20,
        network_users=40,
        network_failures=22,
        crowd_users=12,
        crowd_days=6,
    )
    office = features(home, obs_at(T0 + DAY, BERGEN, ip="176.11.120.9"), busy)
    assert office["ip_users_1h"] == office["network_users_1h"] == pytest.approx(math.log1p(1))
    assert office["ip_failures_1h"] == pytest.approx(math.log1p(20))
    assert office["network_failures_1h"] == pytest.approx(math.log1p(22))
    stranger = replace(busy, crowd_users=0, crowd_days=0)
    unknown = features(home, obs_at(T0 + DAY, BERGEN, ip="176.11.120.9"), stranger)
    assert unknown["network_users_1h"] == pytest.approx(math.log1p(40))


def test_the_crowded_network_reason_gives_the_crowds_numbers() -> None:
    home = learned(*[obs_at(T0 + i * HOUR) for i in range(5)])
    office = obs_at(T0 + DAY, BERGEN, ip="176.11.120.9")
    values = compute_features(home, OFFICE_CROWD, office)
    found = {r.code: r.detail for r in explain(home, OFFICE_CROWD, office, values)}
    assert "new_network" not in found
    assert "12 other users" in found["crowded_network"]
    assert "6 different days" in found["crowded_network"]
    # Once the user knows the network, nothing is left to explain.
    known = learned(*[obs_at(T0 + i * HOUR) for i in range(5)], office)
    again = obs_at(T0 + 2 * DAY, BERGEN, ip="176.11.120.9")
    codes = [
        r.code
        for r in explain(known, OFFICE_CROWD, again, compute_features(known, OFFICE_CROWD, again))
    ]
    assert "crowded_network" not in codes


def _codes(profile: Profile, obs: Observation) -> dict[str, str]:
    vector = compute_features(profile, BurstCounts(), obs)
    return {r.code: r.detail for r in explain(profile, BurstCounts(), obs, vector)}


def test_a_look_alike_of_a_known_device_from_a_network_never_seen_is_worded() -> None:
    """A targeted takeover's login: the victim's browser family and OS, another id,
    from the victim's city but a network the user never came from.

    Either half alone is an everyday thing (cookies cleared at home, the user's own
    laptop at a cafe); together they are what a look-alike browser looks like.
    """
    profile = learned(*[obs_at(T0 + i * DAY) for i in range(20)])
    cafe = place("Oslo", "NO", 59.9127, 10.7461, tz="Europe/Oslo", network="AS39832")
    look_alike = desktop(133, device_id="d-look-alike")
    found = _codes(profile, obs_at(T0 + 20 * DAY, cafe, ip="46.15.0.1", device=look_alike))
    assert found["lookalike_device"] == (
        "device id not recognised, but close to Chrome 131 (drift 0.05), from a network never seen"
    )
    assert "similar_device" not in found
    assert "new_network" in found
    # Cookies cleared at home: similar, not a look-alike.
    home = _codes(profile, obs_at(T0 + 20 * DAY, device=look_alike))
    assert "lookalike_device" not in home
    assert "similar_device" in home
    # The user's own laptop at the cafe: a new network, not a look-alike.
    own = _codes(profile, obs_at(T0 + 20 * DAY, cafe, ip="46.15.0.1"))
    assert "lookalike_device" not in own
    # A device like none of the user's is new, not a look-alike of one.
    stranger = desktop(device_id="d-stranger", user_agent=FIREFOX_WIN, screen="1366x768")
    other = _codes(profile, obs_at(T0 + 20 * DAY, cafe, ip="46.15.0.1", device=stranger))
    assert "lookalike_device" not in other
    assert "new_device" in other
