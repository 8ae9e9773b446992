"""Evaluate the engine against the Freeman et al. baseline on a labelled log.

Both replay the same evaluation log in time order, score-then-learn. The engine's
model and the baseline's population counts come from other, earlier logs: the
split is by log (time), never random, which would let a user's later events train
the model that judges their earlier ones. Figures are given for all events and for
established users (at least ``ESTABLISHED_MIN_PRIOR`` earlier events in the log).

The baseline has no policy, so it is compared at the engine's own legitimate
challenge rate (its threshold is the smallest one that challenges no more
legitimate events than the engine did), and both are also shown at a fixed rate.
"""

from __future__ import annotations

import math
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table
from sklearn.metrics import average_precision_score, roc_auc_score

from risk_engine.errors import ConfigurationError, InvalidEventError, RiskEngineError
from risk_engine.events import utc_from_epoch
from risk_engine.geo import GeoLocator
from risk_engine.model.artifact import default_model_path, load_artifact
from risk_engine.offline.backtest import BacktestSummary, run_backtest
from risk_engine.offline.contexts import context_figures, contexts_of, render_contexts
from risk_engine.offline.freeman import freeman_backtest
from risk_engine.offline.labels import (
    ESTABLISHED_MIN_PRIOR,
    OWNER_ROUTINE,
    Label,
    LabelledRun,
    load_labels,
)
from risk_engine.offline.logs import (
    LogReport,
    LogWriter,
    events_in_time_order,
    read_records,
    required_text,
)
from risk_engine.offline.remote import LogPath, log_key
from risk_engine.offline.replayer import Ticker

FIXED_RATE = 0.02
OUTCOME_RANK = {"allow": 0, "step_up": 1, "deny": 2}

Figures = dict[str, Any]


Decided = tuple[float, int, tuple[str, ...]]


def parse_decision(record: dict[str, Any]) -> tuple[str, Decided]:
    """(event_id, (score, outcome rank, reason codes)) of one decision line."""
    event_id = required_text(record, "event_id")
    score = record.get("score")
    if not isinstance(score, int | float) or isinstance(score, bool):
        raise InvalidEventError("score: a number is required", field="score")
    decision = record.get("decision")
    rank = OUTCOME_RANK.get(decision) if isinstance(decision, str) else None
    if rank is None:
        raise InvalidEventError(
            f"decision: one of {', '.join(OUTCOME_RANK)} is required", field="decision"
        )
    reasons = record.get("reasons", [])
    if not isinstance(reasons, list) or not all(
        isinstance(r, dict) and isinstance(r.get("code"), str) for r in reasons
    ):
        raise InvalidEventError(
            "reasons: a list of {code, ...} objects is required", field="reasons"
        )
    return event_id, (float(score), rank, tuple(r["code"] for r in reasons))


def load_decisions(path: Path, report: LogReport) -> dict[str, Decided]:
    """event_id -> (score, outcome rank, reason codes) from a decisions log."""
    return dict(read_records([path], parse_decision, report, "decisions file"))


def build_run(
    events_path: LogPath,
    labels: dict[str, Label],
    decisions_path: Path,
    baseline: Iterable[tuple[str, float]] | None = None,
) -> LabelledRun:
    """Join events (time order), labels, decisions and baseline scores by event id.

    The bad lines of the events and of the decisions are in the run's ``report``.
    """
    report = LogReport()
    decisions = load_decisions(decisions_path, report)
    base = dict(baseline) if baseline is not None else None
    seen: Counter[str] = Counter()
    ids: list[str] = []
    actions: list[str] = []
    attack: list[bool] = []
    kinds: list[str] = []
    prior: list[int] = []
    scores: list[float] = []
    outcomes: list[int] = []
    codes: list[tuple[str, ...]] = []
    base_scores: list[float] = []
    routine: list[bool] = []
    unlabelled = undecided = 0
    first, last = math.inf, -math.inf
    for event in events_in_time_order(events_path, report):
        count = seen[event.user_id]
        seen[event.user_id] = count + 1
        decided = decisions.get(event.event_id)
        if decided is None:
            undecided += 1
            continue
        label = labels.get(event.event_id)
        unlabelled += label is None
        is_attack = label is not None and label.is_attack
        ids.append(event.event_id)
        actions.append(event.action)
        attack.append(is_attack)
        kinds.append((label.attack_type or "attack") if label is not None and is_attack else "")
        routine.append(is_attack and label is not None and label.scenario == OWNER_ROUTINE)
        prior.append(count)
        scores.append(decided[0])
        outcomes.append(decided[1])
        codes.append(decided[2])
        if base is not None:
            base_scores.append(base.get(event.event_id, math.nan))
        first, last = min(first, event.epoch), max(last, event.epoch)
    return LabelledRun(
        event_ids=ids,
        actions=actions,
        attack=np.asarray(attack, dtype=bool),
        attack_types=np.asarray(kinds, dtype=str),
        prior_events=np.asarray(prior, dtype=np.int64),
        score=np.asarray(scores, dtype=np.float64),
        outcome=np.asarray(outcomes, dtype=np.int8),
        reason_codes=codes,
        baseline=np.asarray(base_scores, dtype=np.float64) if base is not None else None,
        owner_routine=np.asarray(routine, dtype=bool) if any(routine) else None,
        window=(first, last),
        unlabelled=unlabelled,
        undecided=undecided,
        report=report,
    )


def write_label_outcomes(labels: dict[str, Label], path: Path) -> Path:
    """Step-up outcomes as the simulator writes them: legitimate passed, attacks failed."""
    with LogWriter(path) as out:
        for event_id, label in labels.items():
            result = "failed" if label.is_attack else "passed"
            out.write_record({"event_id": event_id, "step_up": result})
    return path


def labelled_backtest(
    events_path: LogPath,
    labels: dict[str, Label],
    workdir: Path,
    *,
    outcomes_path: Path | None = None,
    model_path: Path | None = None,
    policy_path: Path | None = None,
    geo: GeoLocator | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool | None = False,
) -> tuple[Path, Path, BacktestSummary]:
    """Run the contract backtest with outcomes from the labels: (decisions, outcomes, summary).

    ``scheduler``, ``workers`` and ``progress`` as for ``run_backtest``.
    """
    outcomes = outcomes_path or write_label_outcomes(labels, workdir / "outcomes.jsonl")
    decisions = workdir / "decisions.jsonl"
    summary = run_backtest(
        events_path,
        decisions,
        outcomes_path=outcomes,
        model_path=model_path,
        policy_path=policy_path,
        geo=geo,
        progress=progress,
        workers=workers,
        scheduler=scheduler,
        label="backtest (evaluate)",
    )
    return decisions, outcomes, summary


# -- figures --------------------------------------------------------------------------


def threshold_for_count(
    scores: NDArray[np.float64], count: int, *, decimals: int | None = None
) -> float:
    """The smallest threshold t with at most ``count`` of ``scores`` >= t.

    Ties are never split: when the boundary score is shared, all of them stay below
    t, so the rate is met (and may fall short of it). With ``decimals``, t is the
    next value on that grid, for scores that are rounded to it.
    """
    if count >= scores.size:
        return -math.inf
    boundary = float(np.sort(scores)[::-1][max(count, 0)])
    if decimals is None:
        return math.nextafter(boundary, math.inf)
    # round() moves a value by at most half a step, so this lands strictly above it.
    return round(round(boundary, decimals) + 10.0**-decimals, decimals)


def threshold_at_rate(
    scores: NDArray[np.float64], rate: float, *, decimals: int | None = None
) -> float:
    """The smallest threshold that flags at most ``rate`` of ``scores`` (score >= t)."""
    return threshold_for_count(scores, math.floor(rate * scores.size + 1e-9), decimals=decimals)


def ranking(scores: NDArray[np.float64], attack: NDArray[np.bool_]) -> Figures:
    """ROC AUC and average precision; None when only one class is present."""
    if attack.all() or not attack.any():
        return {"roc_auc": None, "average_precision": None}
    return {
        "roc_auc": float(roc_auc_score(attack, scores)),
        "average_precision": float(average_precision_score(attack, scores)),
    }


def _mean(values: NDArray[np.bool_]) -> float | None:
    return float(values.mean()) if values.size else None


def rates(flag: NDArray[np.bool_], attack: NDArray[np.bool_], types: NDArray[np.str_]) -> Figures:
    """Legitimate challenge rate, overall catch rate and catch rate per attack type."""
    return {
        "legit_challenge_rate": _mean(flag[~attack]),
        "catch_rate": _mean(flag[attack]),
        "catch_by_type": {
            kind: float(flag[types == kind].mean()) for kind in sorted(set(types[attack].tolist()))
        },
    }


def owner_routine_figures(
    score: NDArray[np.float64], attack: NDArray[np.bool_], routine: NDArray[np.bool_]
) -> Figures:
    """Attacks the same as the victim's own routine: their share, and the ranking without them.

    Such an event is drawn from the owner's own behaviour, so no detector can rank
    it above the owner's legitimate events except by chance: at random among the
    legitimate events it adds half its share to the ROC AUC's shortfall, so
    ``roc_auc_bound`` (every other attack ranked first) is the best attainable.
    """
    share = float(routine.sum() / attack.sum())
    kept = ~routine
    return {
        "attacks": int(routine.sum()),
        "share": share,
        "roc_auc_without": ranking(score[kept], attack[kept])["roc_auc"],
        "roc_auc_bound": 1.0 - share / 2.0,
    }


def scope_figures(
    run: LabelledRun, mask: NDArray[np.bool_], fixed_rate: float = FIXED_RATE
) -> Figures:
    """Every figure for the events selected by ``mask``."""
    attack, types = run.attack[mask], run.attack_types[mask]
    legit = ~attack
    score, outcome = run.score[mask], run.outcome[mask]
    engine = {
        **ranking(score, attack),
        **rates(outcome >= 1, attack, types),
        "legit_deny_rate": _mean(outcome[legit] >= 2),
    }
    if run.owner_routine is not None:
        routine = run.owner_routine[mask] & attack
        if routine.any():
            engine["owner_routine"] = owner_routine_figures(score, attack, routine)
    at_fixed = threshold_at_rate(score[legit], fixed_rate)
    out: Figures = {
        "events": int(mask.sum()),
        "legit": int(legit.sum()),
        "attacks": int(attack.sum()),
        "attacks_by_type": dict(sorted(Counter(types[attack].tolist()).items())),
        "engine": engine,
        "engine_at_fixed": {"threshold": at_fixed, **rates(score >= at_fixed, attack, types)},
    }
    if run.baseline is not None:
        base = run.baseline[mask]
        matched = threshold_at_rate(base[legit], engine["legit_challenge_rate"] or 0.0)
        fixed = threshold_at_rate(base[legit], fixed_rate)
        out["baseline"] = {
            **ranking(base, attack),
            "threshold": matched,
            **rates(base >= matched, attack, types),
        }
        out["baseline_at_fixed"] = {"threshold": fixed, **rates(base >= fixed, attack, types)}
    return out


def figures(run: LabelledRun, fixed_rate: float = FIXED_RATE) -> Figures:
    """Figures for all events and for established users."""
    return {
        "fixed_rate": fixed_rate,
        "established_min_prior": ESTABLISHED_MIN_PRIOR,
        "scopes": {
            "all": scope_figures(run, np.ones(run.attack.size, dtype=bool), fixed_rate),
            "established": scope_figures(run, run.established, fixed_rate),
        },
    }


# -- the whole evaluation -------------------------------------------------------------


def _split_warnings(
    events_path: LogPath, train: list[Path], model_path: Path | None, *, check_model: bool
) -> list[str]:
    """Refuse a baseline trained on the evaluation log; warn of an in-sample model."""
    target = log_key(events_path)
    if any(log_key(p) == target for p in train):
        raise ConfigurationError(
            f"{events_path} is also a baseline training log: evaluate on a later or other log"
        )
    if not check_model:
        return []
    try:
        artifact = load_artifact(model_path or default_model_path())
    except RiskEngineError:
        return []  # the backtest reports an unusable model itself
    files = [log_key(str(f)) for f in artifact.training.get("files", [])]
    if target in files:
        return [f"the model {artifact.model_version} was trained on {events_path}: in-sample"]
    return []


def evaluate(
    events_path: LogPath,
    labels_path: Path,
    *,
    decisions_path: Path | None = None,
    outcomes_path: Path | None = None,
    model_path: Path | None = None,
    policy_path: Path | None = None,
    baseline_train: list[Path] | None = None,
    fixed_rate: float = FIXED_RATE,
    geo: GeoLocator | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool | None = False,
) -> tuple[Figures, LabelledRun]:
    """Backtest (unless decisions are given), replay the baseline, and compute the figures.

    The backtest runs where ``scheduler`` and ``workers`` say (as ``run_backtest``);
    the client then holds a few columns per event (score, outcome, truth, prior
    events, reason codes, the baseline's score), never feature rows.
    """
    train = baseline_train or []
    warnings = _split_warnings(
        events_path, train, model_path, check_model=decisions_path is None or model_path is not None
    )
    # Every input's bad lines, each counted once: the labels here, the baseline's logs
    # and the outcomes in the baseline's replay, the events and decisions in the run.
    reading = LogReport()
    labels = load_labels([labels_path], reading)
    geo = geo or GeoLocator()
    with tempfile.TemporaryDirectory(prefix="risk-engine-evaluate-") as tmp:
        if decisions_path is None:
            decisions_path, outcomes_path, _ = labelled_backtest(
                events_path,
                labels,
                Path(tmp),
                outcomes_path=outcomes_path,
                model_path=model_path,
                policy_path=policy_path,
                geo=geo,
                scheduler=scheduler,
                workers=workers,
                progress=progress,
            )
        elif outcomes_path is None:
            outcomes_path = write_label_outcomes(labels, Path(tmp) / "outcomes.jsonl")
        show = sys.stderr.isatty() if progress is None else progress
        with Ticker(None, show, "Freeman baseline") as ticker:
            baseline = freeman_backtest(
                events_path,
                train,
                outcomes_path=outcomes_path,
                geo=geo,
                report=reading,
                on_tick=ticker.update,
            )
        run = build_run(events_path, labels, decisions_path, baseline)
    reading.absorb(run.report)
    if run.unlabelled:
        warnings.append(f"{run.unlabelled} events have no label and count as legitimate")
    if run.undecided:
        warnings.append(f"{run.undecided} events have no decision and are left out")
    report = figures(run, fixed_rate)
    contexts = contexts_of(run, labels)
    if contexts is not None:
        report["contexts"] = context_figures(run, contexts)
    report["inputs"] = {
        "events": str(events_path),
        "labels": str(labels_path),
        "model": str(model_path) if model_path else "(bundled default)",
        "policy": str(policy_path) if policy_path else "(bundled default)",
        "baseline_train": [str(p) for p in train],
        "window": [utc_from_epoch(t).isoformat() for t in run.window if math.isfinite(t)],
        "warnings": warnings,
        **skipped_lines(reading),
    }
    return report, run


def skipped_lines(report: LogReport) -> Figures:
    """The bad lines skipped in all inputs: how many, and the first ones (file, line)."""
    return {"bad_lines": report.bad, "problems": [str(p) for p in report.problems]}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def owner_routine_rows(engine: Figures, columns: int) -> list[tuple[str, ...]]:
    """The ROC AUC rows for attacks the same as the victim's own routine, when present."""
    routine = engine.get("owner_routine")
    if routine is None:
        return []
    blank = ("",) * (columns - 1)
    return [
        (
            f"  without the owner's routine ({routine['attacks']} attacks,"
            f" {100.0 * routine['share']:.2f}%)",
            _num(routine["roc_auc_without"]),
            *blank,
        ),
        ("  best attainable (those at random)", _num(routine["roc_auc_bound"]), *blank),
    ]


def render(report: Figures, console: Console) -> None:
    """One table per scope: engine and baseline side by side, matched and at the fixed rate."""
    fixed = f"{100.0 * report['fixed_rate']:g}%"
    heads = {
        "engine": "engine, policy",
        "baseline": "Freeman, matched",
        "engine_at_fixed": f"engine @{fixed}",
        "baseline_at_fixed": f"Freeman @{fixed}",
    }
    for name, scope in report["scopes"].items():
        title = "all events" if name == "all" else "established users"
        if name != "all":
            title += f" (>= {report['established_min_prior']} prior events)"
        table = Table(
            title=f"{title}: {scope['events']:,} events, {scope['legit']:,} legitimate, "
            f"{scope['attacks']:,} attacks"
        )
        keys = [key for key in heads if key in scope]
        table.add_column("metric")
        for key in keys:
            table.add_column(heads[key], justify="right")
        cells = [scope[key] for key in keys]
        table.add_row("ROC AUC", *(_num(c.get("roc_auc")) for c in cells))
        for row in owner_routine_rows(cells[0], len(cells)):
            table.add_row(*row)
        table.add_row("average precision", *(_num(c.get("average_precision")) for c in cells))
        table.add_row("legit challenged", *(_pct(c["legit_challenge_rate"]) for c in cells))
        table.add_row("legit denied", *(_pct(c.get("legit_deny_rate")) for c in cells))
        table.add_row(
            f"caught: all attacks ({scope['attacks']})", *(_pct(c["catch_rate"]) for c in cells)
        )
        for kind, count in scope["attacks_by_type"].items():
            table.add_row(
                f"  {kind} ({count})", *(_pct(c["catch_by_type"].get(kind)) for c in cells)
            )
        console.print(table)
    if "contexts" in report:
        render_contexts(report["contexts"], console, "legitimate events by context")
    inputs = report.get("inputs", {})
    if "bad_lines" in inputs:
        console.print(f"{inputs['bad_lines']} bad lines skipped")
    for warning in inputs.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")


def write_json(report: Figures, path: Path) -> None:
    """All figures as JSON (infinite thresholds become null)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(clean(report), option=orjson.OPT_INDENT_2))
