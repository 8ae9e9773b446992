"""Calibrate the policy's thresholds per action class from a labelled backtest.

For each class: ``step_up`` is the smallest score threshold at which no more than the
target share of the class's legitimate events is challenged, counting the events
that the policy's floors (reason codes such as ``impossible_travel``) challenge
whatever the score; ``deny`` the same with the deny target. A class with too few
legitimate events to measure the rate keeps its thresholds; its deny threshold
is only moved when the deny target leaves as many legitimate events to measure as
the step-up target does at ``min_legit`` (4,000 at the defaults). The result is
written as a new policy version and read back through the validating loader.

Labels are optional. A bank going live has none: then an event counts as
legitimate unless the user failed the step-up the engine asked for (the step-up
outcomes) or feedback confirmed it as fraud, which is what a shadow period of
the service gives (see ``observed_labels``). Then the deny target is a ceiling,
not a budget: a deny threshold that denies more is raised, but none is lowered,
since a denied user gets no step-up to fail and so nothing observed can say that
a denial was right.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table

from risk_engine.decision import Outcome
from risk_engine.errors import ConfigurationError
from risk_engine.geo import GeoLocator
from risk_engine.offline.evaluate import (
    build_run,
    labelled_backtest,
    load_decisions,
    threshold_for_count,
)
from risk_engine.offline.labels import Label, LabelledRun, audit_labels, load_labels
from risk_engine.offline.logs import LogReport
from risk_engine.offline.remote import LogPath
from risk_engine.policy import Policy, load_policy, parse_policy, save_policy

DECIMALS = 6  # decisions carry scores rounded to 6 decimals; thresholds sit on that grid
STEP = 10.0**-DECIMALS
MIN_LEGIT = 200


@dataclass(frozen=True)
class Curve:
    """Friction against catch for one class: at ``score >= thresholds[i]`` (or a floor)."""

    thresholds: NDArray[np.float64]
    legit_rate: NDArray[np.float64]
    catch_rate: NDArray[np.float64]


@dataclass(frozen=True)
class ClassCalibration:
    """What calibration did to one action class."""

    name: str
    legit: int
    attacks: int
    kept: bool
    step_up: tuple[float, float]  # (old, new)
    deny: tuple[float, float]
    challenge_rate: tuple[float | None, float | None]  # legitimate events challenged
    deny_rate: tuple[float | None, float | None]
    catch_rate: tuple[float | None, float | None]  # attacks stepped up or denied
    note: str = ""


def floor_masks(run: LabelledRun, policy: Policy) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Events the policy's floors step up (or deny) whatever their score."""
    step = np.zeros(len(run.reason_codes), dtype=bool)
    deny = np.zeros(len(run.reason_codes), dtype=bool)
    for index, codes in enumerate(run.reason_codes):
        ranks = [policy.floors[c].rank for c in codes if c in policy.floors]
        top = max(ranks, default=0)
        step[index] = top >= Outcome.STEP_UP.rank
        deny[index] = top >= Outcome.DENY.rank
    return step, deny


def capped_scores(
    run: LabelledRun, policy: Policy
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The scores as the policy can act on them: (for step-up, for deny).

    An event whose reasons hold a ceiling below an outcome never reaches it on its
    score (``PolicyTable.decide``), so for that outcome its score is -inf; the floors
    (``floor_masks``) still raise it.
    """
    step = run.score.copy()
    deny = run.score.copy()
    if policy.ceilings:
        for index, codes in enumerate(run.reason_codes):
            ranks = [policy.ceilings[c].rank for c in codes if c in policy.ceilings]
            if ranks:
                cap = min(ranks)
                if cap < Outcome.STEP_UP.rank:
                    step[index] = -np.inf
                if cap < Outcome.DENY.rank:
                    deny[index] = -np.inf
    return step, deny


def class_names(run: LabelledRun, policy: Policy) -> NDArray[np.str_]:
    """The policy's action class of every event."""
    return np.asarray([policy.class_of(a)[0] for a in run.actions], dtype=str)


def challenged(run: LabelledRun, policy: Policy) -> NDArray[np.bool_]:
    """Events that ``policy`` steps up or denies by score or floor (no session assurance)."""
    classes = class_names(run, policy)
    step = np.asarray([policy.classes[name].step_up for name in classes], dtype=np.float64)
    return np.asarray((capped_scores(run, policy)[0] >= step) | floor_masks(run, policy)[0])


def class_curves(run: LabelledRun, policy: Policy) -> dict[str, Curve]:
    """The friction/catch curve of every class that has legitimate events and attacks."""
    classes = class_names(run, policy)
    forced = floor_masks(run, policy)[0]
    scores = capped_scores(run, policy)[0]
    out: dict[str, Curve] = {}
    for name in policy.classes:
        rows = classes == name
        if (rows & run.attack).any() and (rows & ~run.attack).any():
            out[name] = tradeoff_curve(scores[rows], run.attack[rows], forced[rows])
    return out


def tradeoff_curve(
    scores: NDArray[np.float64], attack: NDArray[np.bool_], forced: NDArray[np.bool_] | None = None
) -> Curve:
    """Legitimate challenge rate and catch rate at every distinct score threshold."""
    forced = np.zeros(scores.size, dtype=bool) if forced is None else forced
    thresholds = np.unique(scores)[::-1]

    def rate_at(rows: NDArray[np.bool_]) -> NDArray[np.float64]:
        if not rows.any():
            return np.full(thresholds.size, np.nan)
        free = np.sort(scores[rows & ~forced])
        above = free.size - np.searchsorted(free, thresholds, side="left")
        return (above + int((rows & forced).sum())) / float(rows.sum())

    return Curve(thresholds, rate_at(~attack), rate_at(attack))


def _threshold(
    scores: NDArray[np.float64], forced: NDArray[np.bool_], target: float
) -> tuple[float, bool]:
    """(smallest threshold meeting ``target`` with the floors counted, whether it is met)."""
    allowed = math.floor(target * scores.size + 1e-9) - int(forced.sum())
    free = scores[~forced]
    threshold = threshold_for_count(free, max(allowed, 0), decimals=DECIMALS)
    return threshold, allowed >= 0


def _flagged(
    scores: NDArray[np.float64], threshold: float, floor: NDArray[np.bool_], rows: NDArray[np.bool_]
) -> float | None:
    """Share of ``rows`` at or above ``threshold`` or raised by a floor (None if empty)."""
    if not rows.any():
        return None
    return float(((scores[rows] >= threshold) | floor[rows]).mean())


def calibrate_policy(
    run: LabelledRun,
    policy: Policy,
    *,
    target_challenge: float = 0.02,
    target_deny: float = 0.001,
    min_legit: int = MIN_LEGIT,
    today: str | None = None,
    labelled: bool = True,
) -> tuple[Policy, list[ClassCalibration]]:
    """New per-class thresholds meeting the targets on ``run``, as a new policy version.

    ``labelled=False`` (the labels are only what a deployment observes): a deny
    threshold is raised to meet its target but never lowered below the policy's. A
    denied user gets no step-up to fail, so nothing observed tells a denial of an
    attacker from one of a legitimate user, and spending the deny budget on that
    evidence denies whole sessions of people a step-up would have let through.
    """
    if not 0.0 < target_deny < target_challenge < 1.0:
        raise ConfigurationError("targets must satisfy 0 < target-deny < target-challenge < 1")
    classes = class_names(run, policy)
    step_floor, deny_floor = floor_masks(run, policy)
    step_scores, deny_scores = capped_scores(run, policy)
    data = policy.model_dump(mode="json")
    report: list[ClassCalibration] = []
    for name, cls in policy.classes.items():
        legit = (classes == name) & ~run.attack
        attack = (classes == name) & run.attack
        step_up, deny, notes = cls.step_up, cls.deny, []
        kept = int(legit.sum()) < min_legit
        if kept:
            notes.append(f"kept: {int(legit.sum())} legitimate events < {min_legit}")
        else:
            # The deny rate needs as many flaggable events as the step-up rate gets.
            if int(legit.sum()) * target_deny >= min_legit * target_challenge - 1e-9:
                deny, met = _threshold(deny_scores[legit], deny_floor[legit], target_deny)
                deny = round(min(max(deny, 2 * STEP), 1.0), DECIMALS)
                if not met:
                    notes.append("deny floors alone exceed the deny target")
                if not labelled and deny < cls.deny:
                    deny = cls.deny
                    notes.append("deny not lowered without labels")
            else:
                notes.append("deny kept: too few legitimate events for its target")
            step_up, met = _threshold(step_scores[legit], step_floor[legit], target_challenge)
            if not met:
                # The floors spend the whole budget: a threshold "meeting" it would sit
                # just under deny and leave the score no say, so a takeover that raises
                # no floor would pass at any score below deny. The policy's own stays.
                step_up = min(step_up, cls.step_up)
                notes.append("floors alone exceed the challenge target; step-up kept")
            # Never at or above deny: a class must keep a step-up band.
            step_up = round(min(max(step_up, STEP), deny - STEP), DECIMALS)
        data["classes"][name]["step_up"] = step_up
        data["classes"][name]["deny"] = deny
        achieved = _flagged(step_scores, step_up, step_floor, legit)
        if not kept and achieved is not None and achieved > target_challenge:
            notes.append("target not met: ties at the top scores")
        report.append(
            ClassCalibration(
                name=name,
                legit=int(legit.sum()),
                attacks=int(attack.sum()),
                kept=kept,
                step_up=(cls.step_up, step_up),
                deny=(cls.deny, deny),
                challenge_rate=(
                    _flagged(step_scores, cls.step_up, step_floor, legit),
                    achieved,
                ),
                deny_rate=(
                    _flagged(deny_scores, cls.deny, deny_floor, legit),
                    _flagged(deny_scores, deny, deny_floor, legit),
                ),
                catch_rate=(
                    _flagged(step_scores, cls.step_up, step_floor, attack),
                    _flagged(step_scores, step_up, step_floor, attack),
                ),
                note="; ".join(notes),
            )
        )
    data["version"] = policy_version(data, today)
    return parse_policy(data, "(calibrated)"), report


def policy_version(data: dict[str, object], today: str | None = None) -> str:
    """``YYYY-MM-DD.<hash>``: the day and a short hash of the thresholds and floors."""
    day = today or datetime.now(UTC).date().isoformat()
    content = {k: v for k, v in data.items() if k != "version"}
    digest = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{day}.{digest[:6]}"


def write_policy(policy: Policy, path: Path) -> Policy:
    """Write the policy and load it back through the validating loader."""
    save_policy(policy, path)
    loaded = load_policy(path)
    if loaded.model_dump() != policy.model_dump():
        raise ConfigurationError(f"policy written to {path} does not read back the same")
    return loaded


def observed_labels(
    decisions_path: Path,
    outcomes_path: Path | None,
    feedback: dict[str, Label] | None = None,
    *,
    report: LogReport,
) -> dict[str, Label]:
    """The labels a deployment has: failed step-ups of challenged events, and feedback.

    A failed outcome counts only where the engine did step the event up (a
    challenge nobody was asked to pass says nothing); feedback overrides both ways.
    ``report`` gets the outcomes' bad lines; the decisions' are left to ``build_run``,
    which reads them for the run (the same lines).
    """
    labels: dict[str, Label] = {}
    if outcomes_path is not None:
        decisions = load_decisions(decisions_path, LogReport())
        outcomes = load_labels([outcomes_path], report)
        for event_id, label in outcomes.items():
            decided = decisions.get(event_id)
            if label.is_attack and decided is not None and decided[1] == 1:
                labels[event_id] = label
    labels.update(feedback or {})
    return labels


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}%"


def render_calibration(rows: list[ClassCalibration], version: str, console: Console) -> None:
    """Per class: old -> new thresholds, legitimate challenge rate and attacks caught."""
    table = Table(title=f"calibrated policy {version}")
    for head in ("class", "legit", "attacks", "step_up", "deny", "legit challenged"):
        table.add_column(head, justify="left" if head == "class" else "right")
    table.add_column("legit denied", justify="right")
    table.add_column("attacks caught", justify="right")
    table.add_column("note")
    for row in rows:
        table.add_row(
            row.name,
            f"{row.legit:,}",
            f"{row.attacks:,}",
            f"{row.step_up[0]:.6g} -> {row.step_up[1]:.6g}",
            f"{row.deny[0]:.6g} -> {row.deny[1]:.6g}",
            f"{_pct(row.challenge_rate[0])} -> {_pct(row.challenge_rate[1])}",
            f"{_pct(row.deny_rate[0])} -> {_pct(row.deny_rate[1])}",
            f"{_pct(row.catch_rate[0])} -> {_pct(row.catch_rate[1])}",
            row.note,
        )
    console.print(table)


def calibrate_log(
    events_path: LogPath,
    labels_path: Path | None,
    out_path: Path,
    *,
    feedback_paths: list[Path] | None = None,
    decisions_path: Path | None = None,
    outcomes_path: Path | None = None,
    model_path: Path | None = None,
    policy_path: Path | None = None,
    target_challenge: float = 0.02,
    target_deny: float = 0.001,
    min_legit: int = MIN_LEGIT,
    geo: GeoLocator | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool | None = False,
) -> tuple[Policy, list[ClassCalibration], LogReport]:
    """Backtest (unless decisions are given), calibrate, write and validate the policy.

    Without ``labels_path`` the labels are those a deployment observes: failed
    step-ups (from ``outcomes_path``, and the challenge results of an audit log given
    as ``events_path``) and feedback (the feedback files, the audit log's records).
    The report holds the bad lines of every input, each counted once. The backtest
    runs where ``scheduler`` and ``workers`` say (as ``run_backtest``); the client
    holds a few columns per event, never feature rows.
    """
    reading = LogReport()
    labels = load_labels([labels_path], reading) if labels_path is not None else {}
    feedback = load_labels(feedback_paths or [], reading)
    used_outcomes: Path | None = outcomes_path
    with tempfile.TemporaryDirectory(prefix="risk-engine-calibrate-") as tmp:
        if decisions_path is None:
            decisions_path, used_outcomes, summary = labelled_backtest(
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
            if labels_path is not None and outcomes_path is not None:
                # Read by the backtest alone: its report of them is the one.
                reading.bad += summary.outcome_lines_bad
                reading.problems.extend(
                    p for p in summary.problems if p.source == str(outcomes_path)
                )
        if labels_path is None:
            labels = audit_labels([events_path])
            labels.update(observed_labels(decisions_path, used_outcomes, feedback, report=reading))
        else:
            labels.update(feedback)
        run = build_run(events_path, labels, decisions_path)
    reading.absorb(run.report)
    policy, report = calibrate_policy(
        run,
        load_policy(policy_path),
        target_challenge=target_challenge,
        target_deny=target_deny,
        min_legit=min_legit,
        labelled=labels_path is not None,
    )
    return write_policy(policy, out_path), report, reading
