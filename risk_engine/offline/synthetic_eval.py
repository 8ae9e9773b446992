"""Catch per attack kind on a bank's own log, before it goes live: synthesized attacks.

The log (unlabelled, or labelled) gets the synthesizer's attacks (``synthesize``)
interleaved by timestamp, and the usual evaluation (``evaluate``) runs on
the result. These attacks come from the synthesizer a model may have been trained
on, so they are never the only judge: where the log has labels of its own (the
simulator's attack generators, confirmed fraud), the independent evaluation on the
log as it is comes first, and both are reported.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from risk_engine.errors import RiskEngineError
from risk_engine.geo import GeoLocator
from risk_engine.model.artifact import default_model_path, load_artifact
from risk_engine.offline.evaluate import FIXED_RATE, Figures, evaluate, skipped_lines
from risk_engine.offline.labels import load_labels
from risk_engine.offline.logs import LogReport, LogWriter, merged_events
from risk_engine.offline.remote import LogPath, log_key
from risk_engine.offline.synthesize import SynthesisConfig, synthesize


def write_merged(paths: Sequence[LogPath], out: Path, report: LogReport) -> Path:
    """The valid events of ``paths`` as one log in time order (ties: path order)."""
    with LogWriter(out) as handle:
        for event in merged_events(paths, report):
            handle.write_record(event.model_dump(mode="json", exclude_none=True))
    return out


def _model_warnings(
    events_path: LogPath, model_path: Path | None, config: SynthesisConfig
) -> list[str]:
    """An in-sample model, or one trained on this synthesizer's attacks with the same seed."""
    try:
        artifact = load_artifact(model_path or default_model_path())
    except RiskEngineError:
        return []  # the backtest reports an unusable model itself
    warnings = []
    files = [log_key(str(f)) for f in artifact.training.get("files", [])]
    if log_key(events_path) in files:
        warnings.append(
            f"the model {artifact.model_version} was trained on {events_path}: in-sample"
        )
    injected = artifact.training.get("synthesis") or {}
    if injected.get("enabled"):
        warnings.append(
            f"the model {artifact.model_version} was trained on synthesized attacks"
            + (" with this same seed" if injected.get("seed") == config.seed else "")
            + ": these figures are the synthesizer judging its own kinds, not an independent test"
        )
    return warnings


def evaluate_with_synthesis(
    events_path: LogPath,
    labels_path: Path | None,
    config: SynthesisConfig,
    *,
    model_path: Path | None = None,
    policy_path: Path | None = None,
    baseline_train: list[Path] | None = None,
    fixed_rate: float = FIXED_RATE,
    geo: GeoLocator | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool | None = False,
) -> dict[str, Figures]:
    """``independent`` (the log's own labels, when given) and ``synthesized`` figures.

    ``scheduler``, ``workers``, ``progress``: where the backtests run (``evaluate``).
    """
    geo = geo or GeoLocator()
    reports: dict[str, Figures] = {}
    options: dict[str, Any] = {
        "model_path": model_path,
        "policy_path": policy_path,
        "baseline_train": baseline_train,
        "fixed_rate": fixed_rate,
        "geo": geo,
        "scheduler": scheduler,
        "workers": workers,
        "progress": progress,
    }
    if labels_path is not None:
        reports["independent"], _ = evaluate(events_path, labels_path, **options)
    synthesis = synthesize([events_path], config, geo=geo)
    # The merged log holds only valid events: the bad lines are those met writing it.
    reading = LogReport()
    own = load_labels([labels_path], reading) if labels_path is not None else {}
    with tempfile.TemporaryDirectory(prefix="risk-engine-synthetic-eval-") as tmp:
        root = Path(tmp)
        injected = synthesis.write_events(root / "injected.jsonl")
        merged = write_merged([events_path, injected], root / "with_attacks.jsonl", reading)
        labels = synthesis.write_labels(root / "labels.jsonl", also=own)
        report, _ = evaluate(merged, labels, **options)
    report["synthesis"] = synthesis.summary()
    inputs = report["inputs"]
    inputs["events"] = f"{events_path} with synthesized attacks"
    inputs["labels"] = str(labels_path) if labels_path else "(none: synthesized only)"
    inputs.update(skipped_lines(reading))
    inputs["warnings"] = [
        *_model_warnings(events_path, model_path, config),
        # Without labels the log's own events are taken as legitimate: that is the premise.
        *(w for w in inputs["warnings"] if labels_path is not None or "have no label" not in w),
    ]
    reports["synthesized"] = report
    return reports
