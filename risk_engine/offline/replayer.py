"""What every backtest process runs: its engine, its loop body and its progress bar.

The one-process backtest and each partition of the distributed one build the
same engine (``assembly.build_engine`` without settings: deterministic keys, an
in-memory store, an ``EventClock``) and step events through the same
``Replayer``: decide, write, apply the step-up outcome at once. A partition gets
its burst counts dealt (``DealtBurstStore``) from the distributed step that ran
the windows over its network.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from risk_engine.decision import Outcome
from risk_engine.engine import Engine
from risk_engine.errors import InvalidEventError
from risk_engine.events import Event
from risk_engine.offline.logs import BadLine, LineSink, LogReport, read_records, required_text
from risk_engine.profiles.memory import MemoryStore
from risk_engine.profiles.model import BurstCounts, Profile
from risk_engine.profiles.store import BurstNote

T = TypeVar("T")


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
    # Where the work ran: "one process", or the Dask scheduler's address.
    engine: str = "one process"
    dashboard: str | None = None

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def parse_outcome(record: dict[str, Any]) -> tuple[str, bool]:
    """(event_id, passed) of ``{"event_id": ..., "step_up": "passed"|"failed"}``."""
    event_id = required_text(record, "event_id")
    if record.get("step_up") not in ("passed", "failed"):
        raise InvalidEventError('step_up: must be "passed" or "failed"', field="step_up")
    return event_id, record["step_up"] == "passed"


def load_outcomes(path: Path, report: LogReport) -> dict[str, bool]:
    """event_id -> passed, from a step-up outcomes log; bad lines go to the report."""
    return dict(read_records([path], parse_outcome, report, "outcomes file"))


class Ticker:
    """A rich progress bar on stderr, when enabled (on a terminal: CI logs stay clean).

    On stderr: stdout is where evaluate and calibrate print their tables.
    """

    def __init__(self, total: int | None, enabled: bool, label: str = "backtest") -> None:
        self._progress: Progress | None = None
        self._started = time.perf_counter()
        if enabled:
            self._progress = Progress(
                TextColumn(label),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:,.0f} events/s"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._task = self._progress.add_task(label, total=total, rate=0.0)

    def __enter__(self) -> Ticker:
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


class EventClock:
    """The backtest engine's clock: the time of the event being decided."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Replayer:
    """The backtest's loop body: decide an event, write it, apply its outcome at once.

    ``engine`` must run on ``clock`` (``build_engine(clock=clock, ...)``).
    """

    def __init__(
        self, engine: Engine, clock: EventClock, outcomes: dict[str, bool], out: LineSink
    ) -> None:
        self.engine = engine
        self.decisions: Counter[str] = Counter()
        self.outcomes_applied = 0
        self._clock = clock
        self._outcomes = outcomes
        self._out = out

    def step(self, event: Event) -> None:
        self._clock.now = event.epoch
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


class DealtBurstStore(MemoryStore):
    """A memory store whose burst windows and crowds were run over the stream beforehand."""

    def __init__(self) -> None:
        super().__init__()
        self._note: BurstNote | None = None
        self._counts = BurstCounts()

    def deal(
        self,
        ip_key: str,
        network: str,
        now: float,
        user_key: str,
        failed: bool,
        succeeded: bool,
        counts: BurstCounts,
    ) -> None:
        """The next event's burst and crowd counts, and the note the engine must make of it."""
        self._note = BurstNote(ip_key, network, user_key, now, failed, "", succeeded)
        self._counts = counts

    def update_event(self, note: BurstNote, fn: Callable[[Profile, BurstCounts], T]) -> T:
        if note != self._note:
            raise RuntimeError(
                f"distributed backtest: the engine asked about the event {note}"
                f" where the scan derived {self._note}"
            )
        self._note = None
        return self.update(note.user_key, lambda profile: fn(profile, self._counts))

    def burst_counts(self, ip_key: str, network: str, now: float) -> BurstCounts:
        raise RuntimeError("distributed backtest: burst counts are dealt with each event")

    def record_burst(
        self, ip_key: str, network: str, user_key: str, ts: float, failed: bool
    ) -> None:
        raise RuntimeError("distributed backtest: burst notes are dealt with each event")
