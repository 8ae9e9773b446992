"""The backtest (contract section 3): replay a log through the service's own engine.

Events are processed in timestamp order; each is decided from the state built by
earlier events only, then learned, exactly as the HTTP service does, with an
in-memory store. A reported step-up outcome is applied right after its decision.
Large JSON Lines files are split over several processes by user (see
``backtest_parallel``), with exactly the decisions of one process.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from risk_engine.decision import Outcome
from risk_engine.engine import Engine, Scorer, load_scorer
from risk_engine.errors import ConfigurationError, InvalidEventError
from risk_engine.events import Event
from risk_engine.geo import GeoLocator
from risk_engine.logs import BadLine, LogReport, events_in_time_order
from risk_engine.privacy import Hasher
from risk_engine.profiles.memory import MemoryStore
from risk_engine.profiles.store import ProfileStore

# Deterministic keys: a backtest is a pure function of its inputs.
BACKTEST_SECRET = "risk-engine-backtest"
# Below this size a file is replayed in one process: starting workers (each loads the
# model and the GeoIP database) costs more than it saves.
PARALLEL_MIN_BYTES = 16 << 20


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

    def set_total(self, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total)


def backtest_engine(
    scorer: Scorer, store: ProfileStore, geo: GeoLocator
) -> tuple[Engine, list[float]]:
    """The engine every backtest process runs, and the clock cell that holds event time."""
    clock_now = [0.0]
    engine = Engine(
        store=store,
        geo=geo,
        scorer=scorer,
        hasher=Hasher(BACKTEST_SECRET),
        clock=lambda: clock_now[0],
    )
    return engine, clock_now


class Replayer:
    """The backtest's loop body: decide an event, write it, apply its outcome at once."""

    def __init__(
        self, engine: Engine, clock_now: list[float], outcomes: dict[str, bool], out: IO[bytes]
    ) -> None:
        self.engine = engine
        self.decisions: Counter[str] = Counter()
        self.outcomes_applied = 0
        self._clock_now = clock_now
        self._outcomes = outcomes
        self._out = out

    def step(self, event: Event) -> None:
        self._clock_now[0] = event.epoch
        decision = self.engine.decide(event, issue_challenge=False)
        self._out.write(orjson.dumps(decision.contract_dict()) + b"\n")
        self.decisions[decision.decision.value] += 1
        if decision.decision is Outcome.STEP_UP:
            passed = self._outcomes.get(event.event_id)
            if passed is not None:
                self.engine.apply_outcome(
                    event.user_id,
                    event.event_id,
                    passed=passed,
                    now=event.epoch,
                    acr=decision.required_acr,
                )
                self.outcomes_applied += 1


def plan_workers(events_path: Path, workers: int | None) -> int:
    """Processes for this file: one unless it is a large plain JSON Lines file (or asked)."""
    from risk_engine.backtest_parallel import default_workers

    if events_path.name.endswith((".gz", ".parquet")):
        return 1  # the workers seek into the file
    if workers is not None:
        return max(1, workers)
    if events_path.stat().st_size < PARALLEL_MIN_BYTES:
        return 1
    return default_workers()


def run_backtest(
    events_path: Path,
    out_path: Path,
    *,
    outcomes_path: Path | None = None,
    model_path: Path | None = None,
    policy_path: Path | None = None,
    geo: GeoLocator | None = None,
    progress: bool | None = None,
    workers: int | None = None,
) -> BacktestSummary:
    """Replay ``events_path`` and write one decision per valid event to ``out_path``.

    ``workers`` processes share the work (default: one per core, up to four, for a
    large JSON Lines file; one otherwise); the decisions do not depend on it.
    """
    if not events_path.is_file():
        raise ConfigurationError(f"events file not found: {events_path}")
    summary = BacktestSummary()
    outcomes = load_outcomes(outcomes_path, summary) if outcomes_path else {}
    scorer = load_scorer(model_path, policy_path)
    summary.model_version = scorer.model_version
    show = sys.stderr.isatty() if progress is None else progress
    total = _count_lines(events_path) if show else None
    started = time.perf_counter()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    processes = plan_workers(events_path, workers)
    if processes > 1:
        from risk_engine.backtest_parallel import run_parallel

        del scorer  # each worker loads its own; the parent only orders and merges
        with _Ticker(total, show) as ticker:
            result = run_parallel(
                events_path,
                out_path,
                workers=processes,
                outcomes_path=outcomes_path,
                model_path=model_path,
                policy_path=policy_path,
                geo=geo,
                on_total=ticker.set_total,
                on_tick=ticker.update,
            )
        report = result.report
        summary.decisions = result.decisions
        summary.outcomes_applied = result.outcomes_applied
    else:
        engine, clock_now = backtest_engine(scorer, MemoryStore(), geo or GeoLocator())
        report = LogReport()
        with out_path.open("wb") as out, _Ticker(total, show) as ticker:
            replayer = Replayer(engine, clock_now, outcomes, out)
            for event in events_in_time_order(events_path, report):
                replayer.step(event)
                if report.lines % 2000 == 0:
                    ticker.update(report.lines)
        summary.decisions = replayer.decisions
        summary.outcomes_applied = replayer.outcomes_applied
    summary.seconds = time.perf_counter() - started
    summary.events = report.events
    summary.bad = report.bad
    summary.problems = report.problems + summary.problems
    if report.events == 0:
        detail = f"; first problem: {report.problems[0]}" if report.problems else ""
        raise InvalidEventError(f"{events_path} holds no valid event{detail}", field="event")
    return summary
