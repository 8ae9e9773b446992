"""Train the risk model from event logs and write the verified artifact.

The logs are replayed through the service's own feature code (``replay``);
the model is fitted on the rows, with attack labels used where they exist. The
envelope's metrics come from a time-based split: fit on the earliest 80% of the
events, measure on the latest 20%; the shipped model is then fitted on all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from risk_engine.geo import GeoLocator
from risk_engine.model.artifact import (
    ModelArtifact,
    library_versions,
    make_version,
    save_artifact,
)
from risk_engine.model.detector import DetectorParams, RiskModel
from risk_engine.offline.labels import load_labels
from risk_engine.offline.logs import LogReport
from risk_engine.offline.replay import FeatureTable, replay
from risk_engine.offline.synthesize import SynthesisConfig, auto_synthesis, injected_log
from risk_engine.policy import load_policy

HOLDOUT_SHARE = 0.2
TARGET_CHALLENGE = 0.02


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def time_split(table: FeatureTable, share: float = HOLDOUT_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (past, future): the future is the latest ``share`` of events by time."""
    cut = float(np.quantile(table.timestamps, 1.0 - share))
    future = table.timestamps > cut
    return ~future, future


def holdout_metrics(table: FeatureTable, params: DetectorParams) -> dict[str, Any]:
    """Fit on the past, measure on the future: AUC, AP, catch rate at 2% challenge."""
    past, future = time_split(table)
    model = RiskModel(params).fit(table.X[past], table.attack[past])
    scores = model.score(table.X[future])
    y = table.attack[future]
    metrics: dict[str, Any] = {"holdout_events": int(future.sum()), "holdout_attacks": int(y.sum())}
    if 0 < y.sum() < y.size:
        metrics["roc_auc"] = float(roc_auc_score(y, scores))
        metrics["average_precision"] = float(average_precision_score(y, scores))
        threshold = float(np.quantile(scores[~y], 1.0 - TARGET_CHALLENGE))
        metrics["catch_rate_at_2pct"] = float((scores[y] >= threshold).mean())
    return metrics


def suggested_thresholds(
    model: RiskModel, table: FeatureTable, target: float = TARGET_CHALLENGE
) -> dict[str, dict[str, float]]:
    """Per action class: the score that challenges ``target`` of its legitimate events."""
    policy = load_policy(None)
    scores = model.score(table.X)
    classes = np.asarray([policy.class_of(a)[0] for a in table.actions])
    out: dict[str, dict[str, float]] = {}
    for name in policy.classes:
        legit = scores[(classes == name) & ~table.attack]
        if legit.size < 50:
            continue
        out[name] = {
            "step_up": round(float(np.quantile(legit, 1.0 - target)), 6),
            "deny": round(float(np.quantile(legit, 1.0 - target / 20.0)), 6),
        }
    return out


def train(
    events: list[Path],
    out: Path,
    *,
    labels: list[Path] | None = None,
    params: DetectorParams | None = None,
    geo: GeoLocator | None = None,
    synthesize: bool | None = None,
    synthesis: SynthesisConfig | None = None,
    keys: Mapping[str, str] | None = None,
) -> tuple[ModelArtifact, FeatureTable]:
    """Replay, fit, measure and save; returns the artifact and the replayed table.

    ``synthesize``: inject attacks built from the log's own users (``synthesize``);
    None turns it on when the labels hold too few attacks for the supervised model.
    ``keys`` open sealed audit records (see ``replay``).
    """
    params = params or DetectorParams()
    label_report = LogReport()
    label_map = load_labels(labels or [], label_report)
    wanted, why = auto_synthesis(label_map, synthesize, params.supervised_min_attacks)
    injected: dict[str, Any] = {"enabled": False, "reason": why}
    if wanted:
        geo = geo or GeoLocator()
        with injected_log(events, synthesis or SynthesisConfig(seed=params.seed), geo=geo) as (
            path,
            synthesized,
        ):
            table = replay([*events, path], {**label_map, **synthesized.labels}, geo=geo, keys=keys)
        injected = {**synthesized.summary(), "reason": why}
    else:
        table = replay(events, label_map, geo=geo, keys=keys)
    # The table's report covers every input: the events' bad lines, then the labels'.
    table.report.absorb(label_report)
    if table.X.shape[0] < 50:
        raise ValueError(f"too few valid events to train on ({table.X.shape[0]})")
    metrics = holdout_metrics(table, params) if label_map or wanted else {}
    if wanted:
        # The synthesizer judging its own kinds: not an independent test of the model.
        metrics["holdout_includes_synthesized"] = True
    model = RiskModel(params).fit(table.X, table.attack)
    training = {
        "files": [str(p) for p in events],
        "label_files": [str(p) for p in labels or []],
        "events": int(table.X.shape[0]),
        "attacks": int(table.attack.sum()),
        "users": len(set(table.user_ids)),
        "bad_lines": table.report.bad,
        "window": [_iso(float(table.timestamps.min())), _iso(float(table.timestamps.max()))],
        "params": asdict(params),
        "synthesis": injected,
    }
    artifact = ModelArtifact(
        model=model,
        model_version="",
        libraries=library_versions(),
        training=training,
        metrics=metrics,
        thresholds=suggested_thresholds(model, table),
    )
    fingerprint = repr((training, metrics, model.score(table.X[:256]).round(9).tolist()))
    artifact.model_version = make_version(model, fingerprint.encode())
    save_artifact(artifact, out, check_rows=table.X)
    return artifact, table
