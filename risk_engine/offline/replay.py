"""Replay event logs in time order through the service's own engine (score-then-learn).

Each event's features are computed from the profile as built by EARLIER events
only, then the event is learned: trusted unless it is labelled as an attack (an
attack would have been stopped, so it must not teach the profile).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from risk_engine.assembly import build_engine
from risk_engine.engine import Engine
from risk_engine.features.registry import FEATURE_NAMES
from risk_engine.geo import GeoLocator
from risk_engine.offline.labels import Label
from risk_engine.offline.logs import LogReport, merged_events


@dataclass
class FeatureTable:
    """The replayed feature matrix with what identifies each row."""

    X: NDArray[np.float64]
    event_ids: list[str]
    timestamps: NDArray[np.float64]
    user_ids: list[str]
    actions: list[str]
    prior_events: NDArray[np.int64]
    attack: NDArray[np.bool_]
    attack_types: list[str | None]
    report: LogReport = field(default_factory=LogReport)


def replay(
    paths: list[Path],
    labels: dict[str, Label],
    *,
    geo: GeoLocator | None = None,
    engine: Engine | None = None,
    keys: Mapping[str, str] | None = None,
) -> FeatureTable:
    """Build the feature matrix of the logs, score-then-learn, one event at a time.

    ``keys`` (``ProfileStore.sealing_keys``) open audit logs' sealed decision records;
    those of erased users stay sealed and are counted in the report, not replayed.
    """
    report = LogReport(keys=keys)
    # The offline engine without a model: the backtest's keys, features only.
    engine = engine or build_engine(geo=geo)
    rows: list[list[float]] = []
    ids: list[str] = []
    stamps: list[float] = []
    users: list[str] = []
    actions: list[str] = []
    prior: list[int] = []
    attack: list[bool] = []
    kinds: list[str | None] = []
    history_index = FEATURE_NAMES.index("history_log_events")
    for event in merged_events(paths, report):
        label = labels.get(event.event_id)
        is_attack = label.is_attack if label else False
        values, _ = engine.replay(event, trusted=not is_attack)
        rows.append(values)
        ids.append(event.event_id)
        stamps.append(event.epoch)
        users.append(event.user_id)
        actions.append(event.action)
        prior.append(round(float(np.expm1(values[history_index]))))
        attack.append(is_attack)
        kinds.append(label.attack_type if label and label.is_attack else None)
    return FeatureTable(
        X=np.asarray(rows, dtype=np.float64).reshape(-1, len(FEATURE_NAMES)),
        event_ids=ids,
        timestamps=np.asarray(stamps, dtype=np.float64),
        user_ids=users,
        actions=actions,
        prior_events=np.asarray(prior, dtype=np.int64),
        attack=np.asarray(attack, dtype=bool),
        attack_types=kinds,
        report=report,
    )
