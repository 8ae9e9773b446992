"""The backtest (contract section 3): replay a log through the service's own engine.

Events are processed in timestamp order; each is decided from the state built by
earlier events only, then learned, exactly as the HTTP service does, with an
in-memory store. A reported step-up outcome is applied right after its decision.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from risk_engine.decision import Outcome
from risk_engine.engine import Engine, load_scorer
from risk_engine.errors import ConfigurationError, InvalidEventError
from risk_engine.geo import GeoLocator
from risk_engine.logs import BadLine, LogReport, events_in_time_order
from risk_engine.privacy import Hasher
from risk_engine.profiles.memory import MemoryStore

# Deterministic keys: a backtest is a pure function of its inputs.
BACKTEST_SECRET = "risk-engine-backtest"


@dataclass
class BacktestSummary:
    """What a backtest did."""

    events: int = 0
    bad: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    outcomes_applied: int = 0
    outcome_lines_bad: int = 0
    seconds: float = 0.0
    problems: list[BadLine] = field(default_factory=list)
    model_version: str = ""

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def load_outcomes(path: Path, summary: BacktestSummary) -> dict[str, bool]:
    """event_id -> passed, from `{"event_id": ..., "step_up": "passed"|"failed"}` lines."""
    outcomes: dict[str, bool] = {}
    source = str(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ConfigurationError(f"outcomes file {path} cannot be read: {exc}") from exc
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            problem = None
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                record, problem = None, (f"not valid JSON ({exc})", "outcome")
            if problem is None:
                if not isinstance(record, dict):
                    problem = ("an outcome must be a JSON object", "outcome")
                elif not isinstance(record.get("event_id"), str) or not record["event_id"]:
                    problem = ("event_id: a non-empty string is required", "event_id")
                elif record.get("step_up") not in ("passed", "failed"):
                    problem = ('step_up: must be "passed" or "failed"', "step_up")
            if problem is not None:
                summary.outcome_lines_bad += 1
                summary.problems.append(BadLine(source, number, problem[0], problem[1]))
                continue
            assert isinstance(record, dict)
            outcomes[record["event_id"]] = record["step_up"] == "passed"
    return outcomes


def _count_lines(path: Path) -> int | None:
    if path.name.endswith((".gz", ".parquet")):
        return None
    count = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return count


class _Ticker:
    """A rich progress bar on a terminal; nothing elsewhere (CI logs stay clean)."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self._progress: Progress | None = None
        self._started = time.perf_counter()
        if enabled:
            self._progress = Progress(
                TextColumn("backtest"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:,.0f} events/s"),
                TimeRemainingColumn(),
            )
            self._task = self._progress.add_task("backtest", total=total, rate=0.0)

    def __enter__(self) -> _Ticker:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, done: int) -> None:
        if self._progress is not None:
            rate = done / max(time.perf_counter() - self._started, 1e-9)
            self._progress.update(self._task, completed=done, rate=rate)


def run_backtest(
    events_path: Path,
    out_path: Path,
    *,
    outcomes_path: Path | None = None,
    model_path: Path | None = None,
    policy_path: Path | None = None,
    geo: GeoLocator | None = None,
    progress: bool | None = None,
) -> BacktestSummary:
    """Replay ``events_path`` and write one decision per valid event to ``out_path``."""
    if not events_path.is_file():
        raise ConfigurationError(f"events file not found: {events_path}")
    summary = BacktestSummary()
    outcomes = load_outcomes(outcomes_path, summary) if outcomes_path else {}
    scorer = load_scorer(model_path, policy_path)
    summary.model_version = scorer.model_version
    clock_now = [0.0]
    engine = Engine(
        store=MemoryStore(),
        geo=geo or GeoLocator(),
        scorer=scorer,
        hasher=Hasher(BACKTEST_SECRET),
        clock=lambda: clock_now[0],
    )
    report = LogReport()
    show = sys.stderr.isatty() if progress is None else progress
    total = _count_lines(events_path) if show else None
    started = time.perf_counter()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("wb") as out, _Ticker(total, show) as ticker:
        for event in events_in_time_order(events_path, report):
            clock_now[0] = event.epoch
            decision = engine.decide(event, issue_challenge=False)
            out.write(orjson.dumps(decision.contract_dict()) + b"\n")
            summary.decisions[decision.decision.value] += 1
            if decision.decision is Outcome.STEP_UP:
                passed = outcomes.get(event.event_id)
                if passed is not None:
                    engine.apply_outcome(
                        event.user_id,
                        event.event_id,
                        passed=passed,
                        now=event.epoch,
                        session_id=event.session_id,
                        acr=decision.required_acr,
                    )
                    summary.outcomes_applied += 1
            if report.lines % 2000 == 0:
                ticker.update(report.lines)
    summary.seconds = time.perf_counter() - started
    summary.events = report.events
    summary.bad = report.bad
    summary.problems = report.problems + summary.problems
    if report.events == 0:
        detail = f"; first problem: {report.problems[0]}" if report.problems else ""
        raise InvalidEventError(f"{events_path} holds no valid event{detail}", field="event")
    return summary
