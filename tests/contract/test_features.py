"""The same checks over every feature family of the registry.

Each family must return exactly one finite float per name, whatever the profile
(fresh, built from a realistic history) and whatever the observation (Hypothesis
draws them); no family may change the profile it reads (score-then-learn), nor
while it words its reasons; its learn changes the profile only with something to
learn.
"""

from __future__ import annotations

import ast
import hashlib
import math
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from risk_engine.compiled import source_path
from risk_engine.engine import Engine
from risk_engine.features.common import FeatureView, Lesson
from risk_engine.features.observation import Observation, observe
from risk_engine.features.registry import (
    FAMILIES,
    FEATURE_INDEX,
    FEATURE_NAMES,
    FEATURE_VERSION,
    SCHEMA_HASH,
    FeatureFamily,
    as_dict,
    compute_features,
)
from risk_engine.geo import GeoLocator
from risk_engine.offline.logs import LogReport, read_events
from risk_engine.privacy import Hasher
from risk_engine.profiles.memory import MemoryStore
from risk_engine.profiles.model import HOURS_OF_WEEK, BurstCounts, Profile
from risk_engine.reasons import explain
from risk_engine.useragent import UAInfo

SAMPLE = Path(__file__).parents[2] / "data" / "samples" / "events.jsonl"
README = Path(__file__).parents[2] / "README.md"
HISTORY_EVENTS = 1200
START = 1_772_352_000.0  # 2026-03-01T08:00:00Z

Case = tuple[Profile, BurstCounts, Observation]

FAMILY_IDS = [family.name for family in FAMILIES]


def check_values(family: FeatureFamily, values: tuple[float, ...]) -> None:
    assert len(values) == len(family.names), family.name
    for name, value in zip(family.names, values, strict=True):
        assert isinstance(value, float), f"{family.name}.{name} is {type(value).__name__}"
        assert math.isfinite(value), f"{family.name}.{name} = {value}"


def snapshot(profile: Profile) -> Profile:
    return Profile.loads(profile.dumps())


@pytest.fixture(scope="module")
def geo() -> Iterator[GeoLocator]:
    locator = GeoLocator()
    yield locator
    locator.close()


@pytest.fixture(scope="module")
def history_cases(geo: GeoLocator) -> list[Case]:
    """(profile before, bursts, observation) for events of the sample, learned in order."""
    hasher = Hasher("contract")
    store = MemoryStore()
    engine = Engine(store=store, geo=geo, scorer=None, hasher=hasher)
    cases: list[Case] = []
    for event in islice(read_events(SAMPLE, LogReport()), HISTORY_EVENTS):
        user_key = engine.user_key(event.user_id)
        obs = observe(event, geo.lookup(event.ip), hasher, user_key)
        before = store.get(user_key)
        if before is not None and before.n_events >= 3:
            bursts = store.burst_counts(obs.ip_key, obs.network, obs.ts)
            cases.append((snapshot(before), bursts, obs))
        engine.replay(event, trusted=True)
    assert len(cases) > 500
    return cases


@pytest.fixture(scope="module")
def mature_profile(history_cases: list[Case]) -> Profile:
    """The richest profile of the sample: many devices, places, sessions."""
    profile = max(history_cases, key=lambda case: case[0].n_events)[0]
    assert profile.n_events >= 20 and profile.places and profile.devices
    return profile


# -- observations drawn by Hypothesis ---------------------------------------------------

_text = st.text(alphabet="abcdefXYZ/_-019 ", max_size=12)
_ua = st.builds(
    UAInfo,
    family=st.sampled_from(["", "Chrome", "Firefox", "Mobile Safari", "Googlebot"]),
    major=st.sampled_from(["", "1", "99", "131", "x"]),
    os_family=st.sampled_from(["", "Windows", "iOS", "Android", "Linux"]),
    os_major=st.sampled_from(["", "10", "17"]),
    device_class=st.sampled_from(["", "desktop", "mobile", "bot", "other"]),
)


@st.composite
def observations(draw: st.DrawFn, sessions: list[str] | None = None) -> Observation:
    known = draw(st.booleans())
    lat = draw(st.floats(min_value=-90, max_value=90)) if known else draw(st.none())
    lon = draw(st.floats(min_value=-180, max_value=180)) if known else draw(st.none())
    session_choices = st.none() | _text.filter(bool)
    if sessions:
        session_choices = session_choices | st.sampled_from(sessions)
    return Observation(
        event_id=draw(_text),
        ts=draw(st.floats(min_value=0.0, max_value=4_102_444_800.0)),
        user_key=draw(_text),
        action=draw(
            st.sampled_from(["login", "transfer", "add_payee", "change_mfa", "export_data", "x"])
        ),
        amount=draw(st.none() | st.floats(min_value=0.0, max_value=1e15)),
        success=draw(st.booleans()),
        session_id=draw(session_choices),
        ip_key=draw(_text),
        network=draw(_text),
        geo_known=known,
        country=draw(st.sampled_from(["", "NO", "US", "JP"])),
        city=draw(st.sampled_from(["", "Oslo", "Tokyo"])),
        latitude=lat,
        longitude=lon,
        accuracy_km=draw(st.floats(min_value=0.0, max_value=1000.0)),
        geo_timezone=draw(st.sampled_from(["", "Europe/Oslo", "Asia/Tokyo"])),
        is_anonymous=draw(st.booleans()),
        device_key=draw(_text),
        has_device_id=draw(st.booleans()),
        has_device=draw(st.booleans()),
        ua=draw(_ua),
        platform=draw(_text),
        timezone=draw(_text),
        language=draw(_text),
        screen=draw(_text),
        hour_of_week=draw(st.integers(min_value=0, max_value=HOURS_OF_WEEK - 1)),
        tz_mismatch_h=draw(st.floats(min_value=0.0, max_value=12.0)),
        payee=draw(st.none() | _text),
        network_family=draw(_text),
        payee_key=draw(_text),
    )


_bursts = st.builds(
    BurstCounts,
    ip_users=st.integers(0, 10_000),
    ip_failures=st.integers(0, 10_000),
    network_users=st.integers(0, 10_000),
    network_failures=st.integers(0, 10_000),
)


def _plain_observation() -> Observation:
    return Observation(
        event_id="e-1",
        ts=START,
        user_key="u",
        action="login",
        amount=None,
        success=True,
        session_id="s-1",
        ip_key="ip",
        network="AS1",
        geo_known=True,
        country="NO",
        city="Oslo",
        latitude=59.91,
        longitude=10.75,
        accuracy_km=20.0,
        geo_timezone="Europe/Oslo",
        is_anonymous=False,
        device_key="id:d",
        has_device_id=True,
        has_device=True,
        ua=UAInfo("Chrome", "131", "Windows", "10", "desktop"),
        platform="Win32",
        timezone="Europe/Oslo",
        language="nb-no",
        screen="1440x900",
        hour_of_week=9,
        tz_mismatch_h=0.0,
    )


# -- the checks, once per family --------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_fresh_profile(family: FeatureFamily) -> None:
    profile = Profile(user_key="u")
    check_values(family, family.compute(profile, BurstCounts(), _plain_observation()))


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_realistic_history(family: FeatureFamily, history_cases: list[Case]) -> None:
    for profile, bursts, obs in history_cases:
        check_values(family, family.compute(profile, bursts, obs))


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_does_not_mutate_the_profile(family: FeatureFamily, history_cases: list[Case]) -> None:
    for profile, bursts, obs in history_cases[::10]:
        before = profile.dumps()
        family.compute(profile, bursts, obs)
        assert profile.dumps() == before


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(obs=observations(), bursts=_bursts)
def test_generated_observations_on_a_fresh_profile(
    family: FeatureFamily, obs: Observation, bursts: BurstCounts
) -> None:
    check_values(family, family.compute(Profile(user_key="u"), bursts, obs))


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), bursts=_bursts)
def test_generated_observations_on_a_mature_profile(
    family: FeatureFamily, mature_profile: Profile, data: st.DataObject, bursts: BurstCounts
) -> None:
    obs = data.draw(observations(sessions=list(mature_profile.sessions)))
    before = mature_profile.dumps()
    check_values(family, family.compute(mature_profile, bursts, obs))
    assert mature_profile.dumps() == before


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_reasons_are_weighted_codes_and_do_not_mutate_the_profile(
    family: FeatureFamily, history_cases: list[Case]
) -> None:
    for profile, bursts, obs in history_cases[::5]:
        view = FeatureView(compute_features(profile, bursts, obs), FEATURE_INDEX)
        before = profile.dumps()
        reasons = family.explain(profile, bursts, obs, view)
        assert profile.dumps() == before
        for weight, reason in reasons:
            assert isinstance(weight, float) and weight > 0.0, family.name
            assert reason.code.isidentifier() and reason.code == reason.code.lower()
            assert reason.detail


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_learns_nothing_from_a_lesson_without_one(
    family: FeatureFamily, mature_profile: Profile, data: st.DataObject
) -> None:
    """An event neither seen now, trusted nor refused teaches no family anything."""
    obs = data.draw(observations(sessions=list(mature_profile.sessions)))
    profile = snapshot(mature_profile)
    family.learn(profile, obs, Lesson(seen=False, trusted=False, refused=False))
    assert profile.dumps() == mature_profile.dumps()


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), seen=st.booleans(), trusted=st.booleans(), refused=st.booleans())
def test_learn_keeps_the_profile_readable(
    family: FeatureFamily,
    mature_profile: Profile,
    data: st.DataObject,
    seen: bool,
    trusted: bool,
    refused: bool,
) -> None:
    """Whatever it learns, the profile still stores, loads, and scores to finite values."""
    obs = data.draw(observations(sessions=list(mature_profile.sessions)))
    profile = snapshot(mature_profile)
    family.learn(profile, obs, Lesson(seen=seen, trusted=trusted, refused=refused))
    stored = Profile.loads(profile.dumps())
    assert stored.dumps() == profile.dumps()
    for each in FAMILIES:
        check_values(each, each.compute(stored, BurstCounts(), obs))


# -- the registry -----------------------------------------------------------------------


def test_names_are_unique_and_snake_case() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    for name in FEATURE_NAMES:
        assert name.isidentifier() and name == name.lower()


def test_registry_names_are_the_families_in_order() -> None:
    expected = tuple(name for family in FAMILIES for name in family.names)
    assert expected == FEATURE_NAMES
    assert len({family.name for family in FAMILIES}) == len(FAMILIES)


def test_compute_features_is_the_families_concatenated_and_pure(
    history_cases: list[Case],
) -> None:
    for profile, bursts, obs in history_cases[::25]:
        before = profile.dumps()
        values = compute_features(profile, bursts, obs)
        assert profile.dumps() == before
        expected = [v for family in FAMILIES for v in family.compute(profile, bursts, obs)]
        assert values == expected
        assert list(as_dict(values)) == list(FEATURE_NAMES)


def test_reasons_are_the_families_reasons_by_weight(history_cases: list[Case]) -> None:
    """Most important first; equal weights in registry order."""
    for profile, bursts, obs in history_cases[::25]:
        values = compute_features(profile, bursts, obs)
        view = FeatureView(values, FEATURE_INDEX)
        weighted = [r for family in FAMILIES for r in family.explain(profile, bursts, obs, view)]
        expected = [reason for _, reason in sorted(weighted, key=lambda item: -item[0])]
        assert explain(profile, bursts, obs, values) == expected


def _schema_hash(names: tuple[str, ...], version: int = FEATURE_VERSION) -> str:
    return hashlib.sha256(f"v{version}:{','.join(names)}".encode()).hexdigest()[:16]


def test_schema_hash_is_computed_from_version_and_names() -> None:
    assert _schema_hash(FEATURE_NAMES) == SCHEMA_HASH


@pytest.mark.parametrize(
    "changed",
    [
        FEATURE_NAMES[:-1],
        (*FEATURE_NAMES, "extra_feature"),
        (FEATURE_NAMES[1], FEATURE_NAMES[0], *FEATURE_NAMES[2:]),
        ("renamed", *FEATURE_NAMES[1:]),
    ],
    ids=["dropped", "added", "reordered", "renamed"],
)
def test_schema_hash_changes_when_names_change(changed: tuple[str, ...]) -> None:
    assert _schema_hash(changed) != SCHEMA_HASH


def test_schema_hash_changes_with_the_version() -> None:
    assert _schema_hash(FEATURE_NAMES, FEATURE_VERSION + 1) != SCHEMA_HASH


# -- the reasons' documentation ---------------------------------------------------------


def _codes_in(module_path: Path) -> set[str]:
    """The codes of the ``Reason(code=...)`` a module words."""
    codes: set[str] = set()
    for node in ast.walk(ast.parse(module_path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Reason":
            for keyword in node.keywords:
                if keyword.arg == "code" and isinstance(keyword.value, ast.Constant):
                    codes.add(str(keyword.value.value))
    return codes


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_every_reason_code_is_in_the_readme(family: FeatureFamily) -> None:
    # The source, compiled or not (a compiled module's __file__ is its extension).
    codes = _codes_in(source_path(family.explain.__module__))
    assert codes, f"{family.name} words no reason"
    rows = " ".join(
        line
        for line in README.read_text().splitlines()
        if line.strip().startswith(f"| {family.name} |")
    )
    missing = sorted(code for code in codes if f"`{code}`" not in rows)
    assert not missing, f"reason codes of {family.name} not in the README's table: {missing}"
