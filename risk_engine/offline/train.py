"""Train the risk model from event logs and write the verified artifact.

The logs are replayed through the service's own feature code (``Engine.replay``),
in this process or on a Dask cluster (the backtest's scan, burst and user
partition steps); either way the client keeps a bounded sample of the rows
(``risk_engine.offline.sample``: every attack, a seeded uniform sample of the
rest), the same sample wherever it was computed. The model is fitted on it, with
attack labels used where they exist. The envelope's metrics come from a
time-based split of the sample: fit on its earliest 80%, measure on its latest
20%; the shipped model is then fitted on all of it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
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
from risk_engine.offline.backtest import count_lines, in_file_order
from risk_engine.offline.cluster import offline_engine
from risk_engine.offline.distributed import sample_distributed
from risk_engine.offline.labels import Label, load_attack_labels
from risk_engine.offline.logs import LogReport, expand_paths
from risk_engine.offline.remote import LogPath
from risk_engine.offline.replay import FeatureTable
from risk_engine.offline.replayer import Ticker
from risk_engine.offline.sample import SAMPLE_ROWS, FeatureSample, replay_sample
from risk_engine.offline.sources import plan_pieces
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


def sampled_features(
    events: Sequence[LogPath | str],
    labels: dict[str, Label],
    *,
    geo: GeoLocator | None,
    keys: Mapping[str, str] | None,
    capacity: int,
    seed: int,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> tuple[FeatureTable, FeatureSample, str]:
    """Replay the logs, keep the bounded sample: (its table, the sample's counts, engine).

    The table's report holds every bad line of the logs, by file then line.
    """
    files = expand_paths(events)
    show = sys.stderr.isatty() if progress is None else progress
    total = count_lines(files) if show else None
    with offline_engine(files, scheduler, workers) as where, Ticker(total, show, "train") as tick:
        if where.client is not None:
            report, sample = sample_distributed(
                where.client,
                plan_pieces(files),
                labels=labels,
                geo=geo,
                keys=keys,
                partitions=where.partitions,
                capacity=capacity,
                seed=seed,
                on_total=tick.set_total,
                on_tick=tick.update,
            )
        else:
            report, sample = replay_sample(
                files,
                labels,
                geo=geo or GeoLocator(),
                keys=keys,
                capacity=capacity,
                seed=seed,
                on_tick=tick.update,
            )
    report.problems = in_file_order(report.problems, files)
    return sample.table(report), sample, where.engine


def train(
    events: Sequence[LogPath | str],
    out: Path,
    *,
    labels: list[Path] | None = None,
    params: DetectorParams | None = None,
    geo: GeoLocator | None = None,
    synthesize: bool | None = None,
    synthesis: SynthesisConfig | None = None,
    keys: Mapping[str, str] | None = None,
    sample_rows: int = SAMPLE_ROWS,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool | None = False,
) -> tuple[ModelArtifact, FeatureTable]:
    """Replay, fit, measure and save; returns the artifact and the sample it was fitted on.

    ``synthesize``: inject attacks built from the log's own users (``synthesize``);
    None turns it on when the labels hold too few attacks for the supervised model.
    ``keys`` open sealed audit records (see ``replay``). ``sample_rows``: the
    legitimate rows kept (every attack is). ``scheduler``/``workers``: where the
    features are computed, as for the backtest (``cluster.plan_engine``); the model
    does not depend on it. ``progress``: a progress bar (None: on a terminal).
    """
    params = params or DetectorParams()
    label_report = LogReport()
    # Only attack labels change the replay (an event is trusted unless it is one): the
    # others would weigh on the client, and on every worker, for nothing.
    label_map, labelled = load_attack_labels(labels or [], label_report)
    wanted, why = auto_synthesis(label_map, synthesize, params.supervised_min_attacks)
    injected: dict[str, Any] = {"enabled": False, "reason": why}
    if wanted:
        geo = geo or GeoLocator()

    def features(
        paths: Sequence[LogPath | str], known: dict[str, Label]
    ) -> tuple[FeatureTable, FeatureSample]:
        table, sample, _ = sampled_features(
            paths,
            {event_id: label for event_id, label in known.items() if label.is_attack},
            geo=geo,
            keys=keys,
            capacity=sample_rows,
            seed=params.seed,
            scheduler=scheduler,
            workers=workers,
            progress=progress,
        )
        return table, sample

    if wanted:
        assert geo is not None
        with injected_log(events, synthesis or SynthesisConfig(seed=params.seed), geo=geo) as (
            path,
            synthesized,
        ):
            table, sample = features([*events, path], {**label_map, **synthesized.labels})
        injected = {**synthesized.summary(), "reason": why}
    else:
        table, sample = features(events, label_map)
    # The table's report covers every input: the events' bad lines, then the labels'.
    table.report.absorb(label_report)
    if sample.events < 50:
        raise ValueError(f"too few valid events to train on ({sample.events})")
    metrics = holdout_metrics(table, params) if labelled or wanted else {}
    if wanted:
        # The synthesizer judging its own kinds: not an independent test of the model.
        metrics["holdout_includes_synthesized"] = True
    model = RiskModel(params).fit(table.X, table.attack)
    training = {
        "files": [str(p) for p in events],
        "label_files": [str(p) for p in labels or []],
        "events": sample.events,
        "attacks": sample.attacks,
        "users": sample.users,
        "bad_lines": table.report.bad,
        "window": [_iso(sample.first), _iso(sample.last)],
        "sample": {"rows": int(table.X.shape[0]), "legit_capacity": sample_rows},
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
