"""The deployment flow in one command: learn from the first days, judge the rest.

A bank that goes live has no labels. It runs the engine in shadow for its first
days, trains a model on them, calibrates the policy on them (an event counts as
legitimate unless a step-up the engine asked for failed) and then enforces. This
module plays that flow on a labelled log, split by time: the first ``split_days``
(UTC days from the first event's day) are the shadow days, the rest is judged.
Labels are read only to judge; training and calibration never see them.

The judged backtest replays the whole log, so the events after the split meet
profiles built by the events before it, as they would in production, and the
figures cover only the events after the split.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from risk_engine.errors import ConfigurationError
from risk_engine.events import utc_from_epoch
from risk_engine.geo import GeoLocator
from risk_engine.model.detector import DetectorParams
from risk_engine.offline.calibrate import (
    MIN_LEGIT,
    ClassCalibration,
    calibrate_policy,
    observed_labels,
    render_calibration,
    write_policy,
)
from risk_engine.offline.contexts import context_figures, contexts_of, render_contexts
from risk_engine.offline.evaluate import (
    FIXED_RATE,
    Figures,
    build_run,
    labelled_backtest,
    owner_routine_rows,
    scope_figures,
    skipped_lines,
    write_label_outcomes,
)
from risk_engine.offline.labels import ESTABLISHED_MIN_PRIOR, load_labels
from risk_engine.offline.logs import LogReport, LogWriter, events_in_time_order
from risk_engine.offline.remote import LogPath
from risk_engine.offline.train import train
from risk_engine.policy import load_policy

DAY = 86_400


@dataclass(frozen=True)
class Target:
    """One goal the engine is held to; reported, never asserted."""

    name: str
    path: tuple[str, ...]  # where the figure sits in the report
    bound: float
    at_least: bool  # True: figure >= bound; False: figure <= bound


# The goals of the detection issue, in the deployment flow.
TARGETS = (
    Target("ROC AUC", ("judged", "engine", "roc_auc"), 0.99, True),
    Target("legit challenged", ("judged", "engine", "legit_challenge_rate"), 0.02, False),
    Target("  cellular", ("contexts", "cellular", "challenged"), 0.04, False),
    Target("  vpn", ("contexts", "vpn", "challenged"), 0.04, False),
    Target("  corporate", ("contexts", "corporate", "challenged"), 0.04, False),
    Target(
        "caught: foreign_takeover",
        ("judged", "engine", "catch_by_type", "foreign_takeover"),
        1.0,
        True,
    ),
    Target(
        "caught: vpn_takeover", ("judged", "engine", "catch_by_type", "vpn_takeover"), 0.95, True
    ),
    Target(
        "caught: targeted_takeover",
        ("judged", "engine", "catch_by_type", "targeted_takeover"),
        0.8,
        True,
    ),
    Target(
        "caught: session_hijack",
        ("judged", "engine", "catch_by_type", "session_hijack"),
        0.99,
        True,
    ),
    Target(
        "caught: credential_stuffing",
        ("judged", "engine", "catch_by_type", "credential_stuffing"),
        0.99,
        True,
    ),
    Target(
        "caught: compromised_device",
        ("judged", "engine", "catch_by_type", "compromised_device"),
        0.6,
        True,
    ),
)


@dataclass(frozen=True)
class Split:
    """The shadow days written out, and where the judged days begin."""

    start: float  # UTC midnight of the first event's day
    cut: float  # start + split_days
    first_ids: frozenset[str]
    first_events: int
    later_events: int


def split_log(events_path: LogPath, split_days: int, first_out: Path, report: LogReport) -> Split:
    """Write the events before the cut to ``first_out`` (time order); count the rest.

    ``report`` gets the bad lines of ``events_path``.
    """
    if split_days < 1:
        raise ConfigurationError("--split-days must be at least 1")
    start = cut = math.nan
    ids: set[str] = set()
    later = 0
    with LogWriter(first_out) as out:
        for event in events_in_time_order(events_path, report):
            if math.isnan(start):
                start = float(math.floor(event.epoch / DAY) * DAY)
                cut = start + split_days * DAY
            if event.epoch < cut:
                out.write_record(event.model_dump(mode="json", exclude_none=True))
                ids.add(event.event_id)
            else:
                later += 1
    if not ids:
        raise ConfigurationError(f"{events_path} has no valid events")
    if later == 0:
        raise ConfigurationError(
            f"{events_path} has no events after day {split_days}: nothing left to judge"
        )
    return Split(start, cut, frozenset(ids), len(ids), later)


def _figure(report: Figures, path: tuple[str, ...]) -> float | None:
    value: Any = report
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) else None


def target_checks(report: Figures) -> list[dict[str, Any]]:
    """Every target with the figure found (None when the log has no such events)."""
    out = []
    for target in TARGETS:
        value = _figure(report, target.path)
        met = None
        if value is not None:
            met = value >= target.bound if target.at_least else value <= target.bound
        sign = ">=" if target.at_least else "<="
        out.append(
            {"target": target.name, "goal": f"{sign} {target.bound:g}", "value": value, "met": met}
        )
    return out


def evaluate_deployment(
    events_path: LogPath,
    labels_path: Path,
    *,
    split_days: int,
    outcomes_path: Path | None = None,
    policy_path: Path | None = None,
    params: DetectorParams | None = None,
    target_challenge: float = 0.02,
    target_deny: float = 0.001,
    min_legit: int = MIN_LEGIT,
    fixed_rate: float = FIXED_RATE,
    model_out: Path | None = None,
    policy_out: Path | None = None,
    geo: GeoLocator | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
) -> tuple[Figures, list[ClassCalibration]]:
    """Train and calibrate without labels on the first days, judge the rest with them.

    Training and the backtests run where ``scheduler`` and ``workers`` say.
    """
    # Each input's bad lines once: the labels here, the events in the split, the
    # outcomes where the shadow labels are observed.
    reading = LogReport()
    labels = load_labels([labels_path], reading)
    geo = geo or GeoLocator()
    with tempfile.TemporaryDirectory(prefix="risk-engine-deployment-") as tmp:
        work = Path(tmp)
        first = work / "shadow.jsonl"
        split = split_log(events_path, split_days, first, reading)
        model_path = model_out or work / "model.npz"
        artifact, _ = train(
            [first],
            model_path,
            labels=None,
            params=params,
            geo=geo,
            scheduler=scheduler,
            workers=workers,
        )
        # Step-up results are what a shadow period reports; without a file, the labels
        # stand in for the users (legitimate ones pass, attackers fail).
        outcomes = outcomes_path or write_label_outcomes(labels, work / "outcomes.jsonl")
        shadow_dir = work / "shadow"
        shadow_dir.mkdir()
        shadow_decisions, _, _ = labelled_backtest(
            first,
            {},
            shadow_dir,
            outcomes_path=outcomes,
            model_path=model_path,
            policy_path=policy_path,
            geo=geo,
            scheduler=scheduler,
            workers=workers,
        )
        observed = observed_labels(shadow_decisions, outcomes, report=reading)
        shadow_run = build_run(first, observed, shadow_decisions)
        policy, rows = calibrate_policy(
            shadow_run,
            load_policy(policy_path),
            target_challenge=target_challenge,
            target_deny=target_deny,
            min_legit=min_legit,
            labelled=False,
        )
        policy_file = policy_out or work / "policy.toml"
        write_policy(policy, policy_file)
        judge_dir = work / "judge"
        judge_dir.mkdir()
        decisions, _, _ = labelled_backtest(
            events_path,
            labels,
            judge_dir,
            outcomes_path=outcomes,
            model_path=model_path,
            policy_path=policy_file,
            geo=geo,
            scheduler=scheduler,
            workers=workers,
        )
        run = build_run(events_path, labels, decisions)
    judged = np.asarray([e not in split.first_ids for e in run.event_ids], dtype=bool)
    report: Figures = {
        "flow": {
            "split_days": split_days,
            "shadow": [
                utc_from_epoch(split.start).isoformat(),
                utc_from_epoch(split.cut).isoformat(),
            ],
            "shadow_events": split.first_events,
            "judged_events": int(judged.sum()),
            "failed_step_ups_in_shadow": sum(1 for lab in observed.values() if lab.is_attack),
            "model_version": artifact.model_version,
            "policy_version": policy.version,
            "target_challenge": target_challenge,
        },
        "fixed_rate": fixed_rate,
        "established_min_prior": ESTABLISHED_MIN_PRIOR,
        "judged": scope_figures(run, judged, fixed_rate),
        "judged_established": scope_figures(run, judged & run.established, fixed_rate),
    }
    contexts = contexts_of(run, labels)
    if contexts is not None:
        report["contexts"] = context_figures(run, contexts, judged)
    report["targets"] = target_checks(report)
    report["inputs"] = {
        "events": str(events_path),
        "labels": str(labels_path),
        "policy": str(policy_path) if policy_path else "(bundled default)",
        "outcomes": str(outcomes_path) if outcomes_path else "(from the labels)",
        **skipped_lines(reading),
    }
    return report, rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}%"


def render_deployment(report: Figures, rows: list[ClassCalibration], console: Console) -> None:
    """The calibration, the judged days, friction per context, and the targets."""
    flow = report["flow"]
    console.print(
        f"shadow days {flow['shadow'][0]} .. {flow['shadow'][1]}: {flow['shadow_events']:,} "
        f"events, trained {flow['model_version']} without labels, "
        f"{flow['failed_step_ups_in_shadow']} failed step-ups; judged "
        f"{flow['judged_events']:,} later events"
    )
    render_calibration(rows, flow["policy_version"], console)
    # The judged days' users are nearly all established: their own table would repeat this.
    for key, title in (("judged", "judged days"),):
        scope = report[key]
        table = Table(
            title=f"{title}: {scope['events']:,} events, {scope['legit']:,} legitimate, "
            f"{scope['attacks']:,} attacks"
        )
        fixed = f"engine @{100.0 * report['fixed_rate']:g}%"
        for head in ("metric", "engine, calibrated policy", fixed):
            table.add_column(head, justify="left" if head == "metric" else "right")
        cells = [scope["engine"], scope["engine_at_fixed"]]
        auc = scope["engine"].get("roc_auc")
        table.add_row("ROC AUC", "-" if auc is None else f"{auc:.4f}", "")
        for row in owner_routine_rows(scope["engine"], 2):
            table.add_row(*row)
        table.add_row("legit challenged", *(_pct(c["legit_challenge_rate"]) for c in cells))
        table.add_row("legit denied", _pct(scope["engine"].get("legit_deny_rate")), "")
        table.add_row(f"caught: all ({scope['attacks']})", *(_pct(c["catch_rate"]) for c in cells))
        for kind, count in scope["attacks_by_type"].items():
            table.add_row(
                f"  {kind} ({count})", *(_pct(c["catch_by_type"].get(kind)) for c in cells)
            )
        console.print(table)
    if "contexts" in report:
        render_contexts(report["contexts"], console, "judged days: legitimate events by context")
    table = Table(title="targets")
    for head in ("target", "goal", "value", "met"):
        table.add_column(head, justify="left" if head == "target" else "right")
    for check in report["targets"]:
        value = check["value"]
        shown = (
            "-" if value is None else (f"{value:.4f}" if "AUC" in check["target"] else _pct(value))
        )
        met = {True: "yes", False: "NO", None: "-"}[check["met"]]
        table.add_row(check["target"], check["goal"], shown, met)
    console.print(table)
    console.print(f"{report['inputs']['bad_lines']} bad lines skipped")
