"""The backtest (contract section 3): replay a log through the service's own engine.

Events are processed in timestamp order; each is decided from the state built by
earlier events only, then learned, exactly as the HTTP service does, with an
in-memory store. A reported step-up outcome is applied right after its decision.
Small inputs are replayed in this process; larger ones (or any, when a scheduler
is given) on a Dask cluster (``risk_engine.offline.distributed``), with exactly
the decisions of this process.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from risk_engine.assembly import BACKTEST_SECRET, build_engine, load_scorer
from risk_engine.errors import InvalidEventError
from risk_engine.geo import GeoLocator
from risk_engine.offline.cluster import offline_engine
from risk_engine.offline.distributed import run_distributed
from risk_engine.offline.logs import BadLine, LogReport, LogWriter, expand_paths, merged_events
from risk_engine.offline.remote import LogPath, RemoteFile
from risk_engine.offline.replayer import (
    BacktestSummary,
    EventClock,
    Replayer,
    Ticker,
    load_outcomes,
)
from risk_engine.offline.sources import plan_pieces

__all__ = ["BACKTEST_SECRET", "BacktestSummary", "load_outcomes", "run_backtest"]


def count_lines(paths: Sequence[LogPath]) -> int | None:
    """The lines of local plain JSON Lines inputs (a progress bar's total); None for others.

    A remote log is not read an extra time for a progress bar's total.
    """
    if any(
        isinstance(path, RemoteFile) or path.name.endswith((".gz", ".parquet")) for path in paths
    ):
        return None
    count = 0
    for path in paths:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                count += chunk.count(b"\n")
    return count


def in_file_order(problems: list[BadLine], paths: Sequence[LogPath]) -> list[BadLine]:
    """Bad lines by file, then line: the same list however the files were read."""
    rank = {str(path): k for k, path in enumerate(paths)}
    return sorted(problems, key=lambda p: (rank.get(p.source, len(rank)), p.line))


def run_backtest(
    events_path: LogPath | str | Sequence[LogPath | str],
    out_path: Path,
    *,
    outcomes_path: Path | None = None,
    model_path: Path | None = None,
    policy_path: Path | None = None,
    geo: GeoLocator | None = None,
    progress: bool | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    label: str = "backtest",
) -> BacktestSummary:
    """Replay the events (files, directories, globs) and write one decision per valid event.

    ``scheduler``: a Dask scheduler's address to run on. Without it, ``workers``
    local Dask worker processes (default: one per core for inputs of 16 MiB and
    more, none below: this process); 1 means this process. The decisions do not
    depend on where they were computed. ``label`` names the progress bar
    (``progress``: None shows it on a terminal only).
    """
    paths: Sequence[LogPath | str] = (
        [events_path] if isinstance(events_path, Path | RemoteFile | str) else events_path
    )
    files = expand_paths(paths)
    summary = BacktestSummary()
    outcome_report = LogReport()
    outcomes = load_outcomes(outcomes_path, outcome_report) if outcomes_path else {}
    summary.outcome_lines_bad = outcome_report.bad
    scorer = load_scorer(model_path, policy_path)
    summary.model_version = scorer.model_version
    show = sys.stderr.isatty() if progress is None else progress
    total = count_lines(files) if show else None
    started = time.perf_counter()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with offline_engine(files, scheduler, workers) as where:
        summary.engine, summary.dashboard = where.engine, where.dashboard
        if where.client is not None:
            del scorer  # each worker loads its own; the client only plans and writes
            with LogWriter(out_path) as out, Ticker(total, show, label) as ticker:
                result = run_distributed(
                    where.client,
                    plan_pieces(files),
                    out,
                    outcomes=outcomes,
                    model_path=model_path,
                    policy_path=policy_path,
                    geo=geo,
                    partitions=where.partitions,
                    on_total=ticker.set_total,
                    on_tick=ticker.update,
                )
            report = result.report
            summary.decisions = result.decisions
            summary.outcomes_applied = result.outcomes_applied
        else:
            clock = EventClock()
            engine = build_engine(scorer=scorer, geo=geo, clock=clock)
            report = LogReport()
            with LogWriter(out_path) as out, Ticker(total, show, label) as ticker:
                replayer = Replayer(engine, clock, outcomes, out)
                for event in merged_events(files, report):
                    replayer.step(event)
                    if report.lines % 2000 == 0:
                        ticker.update(report.lines)
            summary.decisions = replayer.decisions
            summary.outcomes_applied = replayer.outcomes_applied
    summary.seconds = time.perf_counter() - started
    summary.events = report.events
    summary.bad = report.bad
    summary.problems = in_file_order(report.problems, files) + outcome_report.problems
    if report.events == 0:
        detail = f"; first problem: {summary.problems[0]}" if summary.problems else ""
        named = ", ".join(str(p) for p in paths)
        raise InvalidEventError(f"{named} holds no valid event{detail}", field="event")
    return summary
