"""The sample log replayed through Engine.replay: the simulator's known cases look right."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from risk_engine.engine import Engine
from risk_engine.features.registry import FEATURE_NAMES, as_dict
from risk_engine.geo import GeoLocator
from risk_engine.model.artifact import default_model_path, load_artifact
from risk_engine.offline.labels import Label, load_labels
from risk_engine.offline.logs import LogReport, events_in_time_order
from risk_engine.privacy import Hasher
from risk_engine.profiles.memory import MemoryStore

SAMPLES = Path(__file__).parents[2] / "data" / "samples"
IMPOSSIBLE_KMH = 1000.0


@dataclass(frozen=True)
class Row:
    event_id: str
    user_id: str
    label: Label
    features: dict[str, float]


@pytest.fixture(scope="module")
def geo() -> Iterator[GeoLocator]:
    locator = GeoLocator()
    yield locator
    locator.close()


@pytest.fixture(scope="module")
def rows(geo: GeoLocator) -> list[Row]:
    """Every sample event, score-then-learn; attacks are not learned (they would be stopped)."""
    labels = load_labels([SAMPLES / "labels.jsonl"], LogReport())
    engine = Engine(store=MemoryStore(), geo=geo, scorer=None, hasher=Hasher("behavior"))
    report = LogReport()
    out = []
    for event in events_in_time_order(SAMPLES / "events.jsonl", report):
        label = labels[event.event_id]
        values, _ = engine.replay(event, trusted=not label.is_attack)
        out.append(Row(event.event_id, event.user_id, label, as_dict(values)))
    assert report.bad == 0
    assert len(out) == len(labels)
    return out


def scenario(rows: list[Row], name: str) -> list[Row]:
    found = [row for row in rows if row.label.scenario == name]
    assert found, f"the sample holds no {name} events"
    return found


def session_kmh(row: Row) -> float:
    return float(np.expm1(row.features["session_speed_log_kmh"]))


def test_plane_trips_are_possible_travel(rows: list[Row]) -> None:
    trips = scenario(rows, "plane_trip")
    assert [r.event_id for r in trips if r.features["impossible_travel"] != 0.0] == []
    # The trips do move: some of them cover real distance.
    assert max(r.features["travel_log_km"] for r in trips) > np.log1p(500.0)


def test_session_hijacks_are_impossible_travel(rows: list[Row]) -> None:
    hijacks = scenario(rows, "session_hijack")
    for row in hijacks:
        assert row.label.is_attack
        assert row.features["impossible_travel"] == 1.0 or session_kmh(row) > IMPOSSIBLE_KMH, (
            row.event_id
        )
    assert all(row.features["session_known"] == 1.0 for row in hijacks)


def test_cleared_cookies_are_a_similar_device_on_their_first_event(rows: list[Row]) -> None:
    firsts: dict[str, Row] = {}
    for row in scenario(rows, "cleared_cookies"):
        firsts.setdefault(row.user_id, row)
    for row in firsts.values():
        assert row.features["device_similar"] == 1.0, row.event_id
        assert row.features["device_new"] == 0.0, row.event_id


def test_benign_scenarios_are_never_impossible_travel_within_a_session(rows: list[Row]) -> None:
    benign = [
        r
        for r in rows
        if r.label.scenario in {"plane_trip", "mobile_ip_churn", "browser_upgrade", "typo"}
    ]
    assert benign
    assert [r.event_id for r in benign if session_kmh(r) > IMPOSSIBLE_KMH] == []


def test_default_model_scores_attacks_above_legit(rows: list[Row]) -> None:
    artifact = load_artifact(default_model_path())
    X = np.asarray([[row.features[name] for name in FEATURE_NAMES] for row in rows])
    attack = np.asarray([row.label.is_attack for row in rows])
    assert 0 < attack.sum() < attack.size
    scores = artifact.model.score(X)
    assert scores[attack].mean() > scores[~attack].mean()
    assert np.median(scores[attack]) > np.median(scores[~attack])
