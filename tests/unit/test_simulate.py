"""The synthetic event stream: deterministic, contract-valid, labelled and geographically true."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import geoip2.database
import orjson
import pytest

from risk_engine.events import parse_event
from risk_engine.offline.simulate.geo import build_city_pool, geolite2_path, haversine_km
from risk_engine.offline.simulate.simulator import (
    ATTACK_TYPES,
    BENIGN_SCENARIOS,
    SimulationConfig,
    simulate,
    write_simulation,
)

Pair = tuple[dict[str, Any], dict[str, Any]]


@dataclass(frozen=True)
class Place:
    """Where the database puts an IP."""

    country: str
    city: str
    latitude: float
    longitude: float


Locate = Callable[[str], Place]


@pytest.fixture(scope="module")
def stream() -> list[Pair]:
    """The stream of a config big enough to hold every scenario and attack type."""
    return list(simulate(SimulationConfig(users=80, days=21, seed=7)))


@pytest.fixture(scope="module")
def locate() -> Iterator[Locate]:
    """IP -> Place through geoip2, as the engine would resolve it."""
    reader = geoip2.database.Reader(geolite2_path(), mode=geoip2.database.MODE_MMAP_EXT)
    cache: dict[str, Place] = {}

    def lookup(ip: str) -> Place:
        place = cache.get(ip)
        if place is None:
            city = reader.city(ip)
            assert city.location.latitude is not None and city.location.longitude is not None
            place = Place(
                str(city.country.iso_code),
                str(city.city.names.get("en")),
                city.location.latitude,
                city.location.longitude,
            )
            cache[ip] = place
        return place

    yield lookup
    reader.close()


def _by_user(stream: list[Pair]) -> dict[str, list[Pair]]:
    users: dict[str, list[Pair]] = defaultdict(list)
    for event, label in stream:
        users[event["user_id"]].append((event, label))
    return users


def _seconds(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    small = SimulationConfig(users=25, days=9, seed=7)
    outputs = []
    for name, config in (("a", small), ("b", small), ("c", SimulationConfig(25, 9, seed=8))):
        paths = [tmp_path / f"{name}.{kind}.jsonl" for kind in ("events", "labels", "outcomes")]
        write_simulation(config, *paths)
        outputs.append([p.read_bytes() for p in paths])
    assert outputs[0] == outputs[1]
    assert outputs[0][0] != outputs[2][0]


def test_id_prefix_renames_users_sessions_and_events_only() -> None:
    config = SimulationConfig(users=15, days=5, seed=7)
    plain = list(simulate(config))
    prefixed = list(simulate(SimulationConfig(users=15, days=5, seed=7, id_prefix="w1-")))
    assert len(prefixed) == len(plain)
    sessions = 0
    for (event, label), (p_event, p_label) in zip(plain, prefixed, strict=True):
        assert p_event["event_id"] == p_label["event_id"] == "w1-" + event["event_id"]
        assert p_event["user_id"] == "w1-" + event["user_id"]
        if event.get("session_id"):
            sessions += 1
            assert p_event["session_id"] == "w1-" + event["session_id"]
        renamed = ("event_id", "user_id", "session_id")
        assert {k: v for k, v in p_event.items() if k not in renamed} == {
            k: v for k, v in event.items() if k not in renamed
        }
        assert {k: v for k, v in p_label.items() if k != "event_id"} == {
            k: v for k, v in label.items() if k != "event_id"
        }
    assert sessions > 0


def test_city_pool_is_a_pure_function_of_the_seed() -> None:
    build = build_city_pool.__wrapped__
    first, second = build(11, samples=30_000), build(11, samples=30_000)
    assert first.cities == second.cities
    assert first.cities != build(12, samples=30_000).cities


def test_events_follow_the_contract(stream: list[Pair]) -> None:
    money = {"transfer"}
    for event, _ in stream:
        parsed = parse_event(event)
        assert parsed.event_id == event["event_id"]
        assert event["timestamp"].endswith("Z") and len(event["timestamp"]) == 20
        assert ("amount" in event) == (event["action"] in money) == ("currency" in event)
        assert ("success" in event) == (event["action"] == "login")
        orjson.dumps(event)


def test_sorted_unique_and_fully_labelled(stream: list[Pair]) -> None:
    stamps = [event["timestamp"] for event, _ in stream]
    assert stamps == sorted(stamps)
    ids = [event["event_id"] for event, _ in stream]
    assert len(set(ids)) == len(ids)
    for event, label in stream:
        assert label["event_id"] == event["event_id"]
        assert set(label) == {"event_id", "is_attack", "attack_type", "scenario", "context"}
        assert label["is_attack"] == (label["attack_type"] is not None)
        assert (label["context"] is None) == label["is_attack"]
        if label["is_attack"]:
            assert label["scenario"] == label["attack_type"]


def test_every_attack_type_and_benign_scenario_appears(stream: list[Pair]) -> None:
    attacks = Counter(label["attack_type"] for _, label in stream if label["is_attack"])
    scenarios = Counter(label["scenario"] for _, label in stream if not label["is_attack"])
    mixed = {kind for kind, weight in SimulationConfig().world.attack_mix if weight > 0}
    assert set(attacks) == mixed == set(ATTACK_TYPES) - {"vpn_takeover"}
    assert set(BENIGN_SCENARIOS) <= set(scenarios)
    first_attack = min(_seconds(e) for e, label in stream if label["is_attack"])
    assert first_attack - _seconds(stream[0][0]) >= 6 * 86_400  # victims have a history
    share = sum(attacks.values()) / len(stream)
    assert 0.003 < share < 0.04


def test_write_simulation_summary_and_outcomes(tmp_path: Path) -> None:
    config = SimulationConfig(users=20, days=10, seed=7, attack_fraction=0.05)
    paths = [tmp_path / f"{kind}.jsonl" for kind in ("events", "labels", "outcomes")]
    summary = write_simulation(config, *paths)
    events, labels, outcomes = (
        [orjson.loads(line) for line in p.read_bytes().splitlines()] for p in paths
    )
    assert summary.events == len(events) == len(labels) == len(outcomes)
    assert summary.attacks == sum(label["is_attack"] for label in labels) > 0
    assert sum(summary.by_attack_type.values()) == summary.attacks
    for label, outcome in zip(labels, outcomes, strict=True):
        assert outcome["event_id"] == label["event_id"]
        assert outcome["step_up"] == ("failed" if label["is_attack"] else "passed")


def test_routine_activity_stays_in_the_home_city(stream: list[Pair], locate: Locate) -> None:
    for events in _by_user(stream).values():
        routine = {
            (locate(e["ip"]).country, locate(e["ip"]).city)
            for e, label in events
            if label["scenario"] in (None, "typo", "browser_upgrade", "cleared_cookies")
        }
        assert len(routine) <= 1


def test_session_hijack_comes_from_another_country_minutes_later(
    stream: list[Pair], locate: Locate
) -> None:
    checked = 0
    for events in _by_user(stream).values():
        for (prev, prev_label), (event, label) in itertools.pairwise(events):
            if label["attack_type"] != "session_hijack" or prev_label["is_attack"]:
                continue
            assert event["action"] != "login"
            assert locate(event["ip"]).country != locate(prev["ip"]).country
            assert 0 < _seconds(event) - _seconds(prev) <= 30 * 60
            victim_sessions = {e.get("session_id") for e, lab in events if not lab["is_attack"]}
            assert event["session_id"] in victim_sessions
            checked += 1
    assert checked > 0


def test_takeovers_come_from_where_their_type_says(stream: list[Pair], locate: Locate) -> None:
    home: dict[str, Place] = {}
    for event, label in stream:
        if label["scenario"] is None:
            home.setdefault(event["user_id"], locate(event["ip"]))
    seen = set()
    for event, label in stream:
        kind = label["attack_type"]
        if kind not in ("foreign_takeover", "in_country_takeover", "targeted_takeover"):
            continue
        place, at_home = locate(event["ip"]), home[event["user_id"]]
        km = haversine_km(place.latitude, place.longitude, at_home.latitude, at_home.longitude)
        if kind == "foreign_takeover":
            assert place.country != at_home.country
        elif kind == "in_country_takeover":
            assert place.country == at_home.country and km >= 100
        else:
            assert (place.country, place.city) == (at_home.country, at_home.city)
        seen.add(kind)
    assert len(seen) == 3


def test_plane_trips_never_outrun_an_airliner(stream: list[Pair], locate: Locate) -> None:
    trips = {e["user_id"] for e, label in stream if label["scenario"] == "plane_trip"}
    assert trips
    far = 0
    for user in trips:
        events = [(e, lab) for e, lab in _by_user(stream)[user] if not lab["is_attack"]]
        for (a, _), (b, _) in itertools.pairwise(events):
            pa, pb = locate(a["ip"]), locate(b["ip"])
            km = haversine_km(pa.latitude, pa.longitude, pb.latitude, pb.longitude)
            if km < 300:
                continue
            far += 1
            hours = (_seconds(b) - _seconds(a)) / 3600
            assert km / hours < 1000
    assert far >= 2 * len(trips)


def test_credential_stuffing_is_a_burst_over_many_accounts(stream: list[Pair]) -> None:
    stuffing = [e for e, label in stream if label["attack_type"] == "credential_stuffing"]
    networks = {e["ip"].rsplit(".", 1)[0] for e in stuffing}
    assert len({e["user_id"] for e in stuffing}) >= 10
    logins = [e for e in stuffing if e["action"] == "login"]
    assert sum(not e["success"] for e in logins) > len(logins) / 2
    assert all("id" not in e["device"] for e in stuffing)
    assert len(networks) <= 3 * len({e["timestamp"][:10] for e in stuffing})


def test_compromised_device_uses_the_victims_own_device(stream: list[Pair]) -> None:
    known: dict[str, set[str]] = defaultdict(set)
    checked = 0
    for event, label in stream:
        device_id = event.get("device", {}).get("id")
        if not label["is_attack"]:
            if device_id:
                known[event["user_id"]].add(device_id)
        elif label["attack_type"] == "compromised_device":
            assert device_id in known[event["user_id"]]
            checked += 1
    assert checked > 0


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="attack_fraction"):
        next(simulate(SimulationConfig(users=2, days=2, attack_fraction=1.0)))
    with pytest.raises(ValueError, match="users"):
        next(simulate(SimulationConfig(users=0)))
