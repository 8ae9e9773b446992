"""The backtest on several processes, with exactly the decisions of one process.

An event's decision depends on its own user's earlier events, and on the burst
windows (distinct users and failed logins per address and per network in the
last hour), which depend on the event stream alone, never on decisions. So the
work splits in four steps:

1. scan: each worker validates one byte range of the file and returns, per valid
   line, its timestamp, offset and burst keys; bad lines are reported from here;
2. bursts: the parent orders the events (timestamp, then file order), runs the
   burst windows over them once, with the very ``BurstTable`` of the memory
   store, and deals each event with its counts to the worker that owns its user;
3. decide: each worker replays its users' events in that global order through
   the backtest's own loop body, on its own engine and memory store; the store
   answers burst queries with the dealt counts and checks that the engine asks
   about exactly the keys dealt, so a change in how the engine keys its bursts
   fails loudly instead of changing decisions;
4. merge: the parent interleaves the workers' decisions back into the global order.

Workers are spawned, not forked, so no thread or handle of the parent leaks into
them. Every wait is bounded and notices a worker that died.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import queue
import tempfile
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from risk_engine.engine import Engine
from risk_engine.events import parse_event_line
from risk_engine.geo import GeoLocator
from risk_engine.logs import MAX_KEPT_PROBLEMS, BadLine, LogReport

# The per-line rules of the one-process reader (blank, foreign record, bad, event),
# reused as they are so that both paths classify every line the same way.
from risk_engine.logs import _line_event as line_event
from risk_engine.profiles.bursts import BurstTable
from risk_engine.profiles.memory import MemoryStore
from risk_engine.profiles.model import BurstCounts, Profile
from risk_engine.profiles.store import BURST_WINDOW_S, BurstNote

if TYPE_CHECKING:
    from risk_engine.backtest import Replayer

# Events per message from the parent to a worker, and messages queued per worker:
# enough to keep the workers busy while the parent runs the bursts, little memory.
CHUNK_EVENTS = 8192
QUEUED_CHUNKS = 4
# How often a worker publishes its progress, and how often the parent looks.
PROGRESS_EVERY = 256
POLL_S = 0.2
# A live worker whose progress stands still this long is taken to be stuck.
STALL_S = 600.0
# Events between two trims of the parent's burst windows.
TRIM_EVERY = 65536

T = TypeVar("T")
GeoPaths = tuple[Path, Path | None, Path | None]
Message = tuple[Any, ...]


@dataclass(frozen=True)
class WorkerConfig:
    """What a spawned worker needs to build the engine of the one-process backtest."""

    index: int
    events_path: Path
    start: int
    end: int
    out_path: Path
    outcomes_path: Path | None
    model_path: Path | None
    policy_path: Path | None
    geo_paths: GeoPaths | None


@dataclass
class ScanResult:
    """What one worker found in its byte range: per valid line, in file order."""

    physical_lines: int
    report: LogReport
    offsets: NDArray[np.int64]
    stamps: NDArray[np.float64]
    user_keys: NDArray[np.uint64]
    ip_keys: NDArray[np.uint64]
    networks: NDArray[np.int32]
    failed: NDArray[np.bool_]
    vocabulary: list[str]


@dataclass
class WorkerResult:
    """What one worker decided."""

    events: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    outcomes_applied: int = 0


@dataclass
class ParallelResult:
    """What the parallel backtest read and decided, for the summary."""

    report: LogReport
    decisions: Counter[str]
    outcomes_applied: int


def key_text(value: int) -> str:
    """The 16 hex digits of a ``Hasher`` digest, back from the integer the scan kept."""
    return f"{value:016x}"


class DealtBurstStore(MemoryStore):
    """A memory store whose burst windows were run over the whole stream beforehand."""

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
        counts: BurstCounts,
    ) -> None:
        """The next event's burst counts, and the note the engine must make of it."""
        self._note = BurstNote(ip_key, network, user_key, now, failed)
        self._counts = counts

    def update_event(self, note: BurstNote, fn: Callable[[Profile, BurstCounts], T]) -> T:
        if note != self._note:
            raise RuntimeError(
                f"parallel backtest: the engine asked about the event {note}"
                f" where the scan derived {self._note}"
            )
        self._note = None
        return self.update(note.user_key, lambda profile: fn(profile, self._counts))

    def burst_counts(self, ip_key: str, network: str, now: float) -> BurstCounts:
        raise RuntimeError("parallel backtest: burst counts are dealt with each event")

    def record_burst(
        self, ip_key: str, network: str, user_key: str, ts: float, failed: bool
    ) -> None:
        raise RuntimeError("parallel backtest: burst notes are dealt with each event")


class TrimmedBurstTable(BurstTable):
    """The memory store's burst table, fed in time order and trimmed as time passes.

    Time only moves forward here, so an entry older than the window before the
    current event can never be counted again. ``trim`` drops such entries but
    keeps each window's newest one, which is all that pruning looks at, so no
    count changes. Memory stays flat in the number of events, where the table
    alone would keep up to ``BURST_MAX_ENTRIES`` entries for every key ever seen.
    """

    def trim(self, now: float) -> None:
        """Forget entries at or before ``now`` minus the window, except each newest."""
        start = now - BURST_WINDOW_S
        for window in self._windows.values():
            window.drop_before(start)


# -- the worker ---------------------------------------------------------------------------


def worker_main(
    config: WorkerConfig,
    tasks: Queue[Message],
    results: Queue[Message],
    scanned: Synchronized[int],
    decided: Synchronized[int],
) -> None:
    """A worker process: scan its byte range, then decide the events dealt to it."""
    try:
        _work(config, tasks, results, scanned, decided)
    except BaseException:
        results.put(("failed", config.index, traceback.format_exc()))
        raise SystemExit(1) from None


def _work(
    config: WorkerConfig,
    tasks: Queue[Message],
    results: Queue[Message],
    scanned: Synchronized[int],
    decided: Synchronized[int],
) -> None:
    """Build the engine of the one-process backtest, scan, then decide what is dealt."""
    from risk_engine.backtest import BacktestSummary, Replayer, backtest_engine, load_outcomes
    from risk_engine.engine import load_scorer

    if config.geo_paths is None:
        geo = GeoLocator()
    else:
        city, asn, anonymous = config.geo_paths
        geo = GeoLocator(city, asn_db=asn, anonymous_db=anonymous)
    store = DealtBurstStore()
    engine, clock_now = backtest_engine(
        load_scorer(config.model_path, config.policy_path), store, geo
    )
    results.put(("scanned", config.index, _scan(config, engine, scanned)))
    outcomes = (
        load_outcomes(config.outcomes_path, BacktestSummary()) if config.outcomes_path else {}
    )
    vocabulary: list[str] = []
    with config.out_path.open("wb") as out, config.events_path.open("rb") as events:
        replayer = Replayer(engine, clock_now, outcomes, out)
        while True:
            message = tasks.get(timeout=STALL_S)
            if message[0] == "vocabulary":
                vocabulary = message[1]
            elif message[0] == "deal":
                _decide(message[1], vocabulary, store, replayer, events, decided)
            else:
                break
    results.put(
        (
            "finished",
            config.index,
            WorkerResult(decided.value, replayer.decisions, replayer.outcomes_applied),
        )
    )


def _scan(config: WorkerConfig, engine: Engine, scanned: Synchronized[int]) -> ScanResult:
    """Validate every line of the byte range; keep what ordering and bursts need."""
    report = LogReport()
    source = str(config.events_path)
    offsets, stamps = array("q"), array("d")
    user_keys, ip_keys, networks = array("Q"), array("Q"), array("i")
    failed = bytearray()
    vocabulary: dict[str, int] = {}
    number = 0
    with config.events_path.open("rb") as handle:
        handle.seek(config.start)
        position = config.start
        for raw in handle:
            if position >= config.end:
                break
            number += 1
            offset = position
            position += len(raw)
            if number % PROGRESS_EVERY == 0:
                scanned.value = number
            event = line_event(raw, number, source, report)
            if event is None:
                continue
            # The keys ``Engine.decide`` queries and notes bursts under (checked there).
            # Only the network is needed of the location: without an ASN database it is
            # the address's prefix, so the scan makes no City lookup that the worker
            # deciding this user would repeat anyway (and no entry in this one's cache).
            network = engine.network_of(event)
            offsets.append(offset)
            stamps.append(event.epoch)
            user_keys.append(int(engine.user_key(event.user_id), 16))
            ip_keys.append(int(engine.hasher.digest("ip", str(event.ip)), 16))
            networks.append(vocabulary.setdefault(network, len(vocabulary)))
            failed.append(event.action == "login" and not event.success)
    scanned.value = number
    return ScanResult(
        physical_lines=number,
        report=report,
        offsets=np.frombuffer(offsets, dtype=np.int64),
        stamps=np.frombuffer(stamps, dtype=np.float64),
        user_keys=np.frombuffer(user_keys, dtype=np.uint64),
        ip_keys=np.frombuffer(ip_keys, dtype=np.uint64),
        networks=np.frombuffer(networks, dtype=np.int32),
        failed=np.frombuffer(bytes(failed), dtype=np.bool_),
        vocabulary=list(vocabulary),
    )


def _decide(
    chunk: dict[str, NDArray[Any]],
    vocabulary: list[str],
    store: DealtBurstStore,
    replayer: Replayer,
    events: IO[bytes],
    decided: Synchronized[int],
) -> None:
    """Decide a dealt chunk: each line read back by offset, parsed, and replayed."""
    offsets = chunk["offsets"].tolist()
    stamps = chunk["stamps"].tolist()
    users = chunk["user_keys"].tolist()
    ips = chunk["ip_keys"].tolist()
    networks = chunk["networks"].tolist()
    failed = chunk["failed"].tolist()
    counts = chunk["counts"].tolist()
    done = decided.value
    for i, offset in enumerate(offsets):
        events.seek(offset)
        # Validated in the scan: parsing the same bytes again cannot fail.
        event = parse_event_line(events.readline())
        store.deal(
            key_text(ips[i]),
            vocabulary[networks[i]],
            stamps[i],
            key_text(users[i]),
            failed[i],
            BurstCounts(*counts[i]),
        )
        replayer.step(event)
        done += 1
        if done % PROGRESS_EVERY == 0:
            decided.value = done
    decided.value = done


# -- the parent ---------------------------------------------------------------------------


def byte_ranges(path: Path, parts: int) -> list[tuple[int, int]]:
    """``parts`` consecutive byte ranges of the file, each starting at a line start."""
    size = path.stat().st_size
    cuts = [0]
    with path.open("rb") as handle:
        for k in range(1, parts):
            target = max(size * k // parts, cuts[-1], 1)
            handle.seek(target - 1)
            handle.readline()  # to the end of the line holding byte target - 1
            cuts.append(min(handle.tell(), size))
    cuts.append(size)
    return list(itertools.pairwise(cuts))


class _Workers:
    """The spawned workers, their queues and progress counters, and bounded waits on them."""

    def __init__(self, configs: list[WorkerConfig], on_tick: Callable[[int], None]) -> None:
        context = multiprocessing.get_context("spawn")
        self.results: Queue[Message] = context.Queue()
        self.tasks: list[Queue[Message]] = [context.Queue(QUEUED_CHUNKS) for _ in configs]
        self.scanned = [context.Value("q", 0, lock=False) for _ in configs]
        self.decided = [context.Value("q", 0, lock=False) for _ in configs]
        self.processes: list[SpawnProcess] = [
            context.Process(
                target=worker_main,
                args=(config, self.tasks[k], self.results, self.scanned[k], self.decided[k]),
                name=f"risk-engine-backtest-{k}",
                daemon=True,
            )
            for k, config in enumerate(configs)
        ]
        self._on_tick = on_tick
        self._last_progress = -1
        self._progress_at = time.monotonic()

    def start(self) -> None:
        for process in self.processes:
            process.start()

    def stop(self) -> None:
        """End every worker still running (after an error); a finished one has exited."""
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            if process.pid is not None:  # started
                process.join(timeout=10.0)
        for q in (*self.tasks, self.results):
            q.close()
            q.cancel_join_thread()

    def tick(self) -> None:
        """Report progress; fail on a dead or stuck worker."""
        decided = sum(int(v.value) for v in self.decided)
        self._on_tick(decided)
        progress = decided + sum(int(v.value) for v in self.scanned)
        now = time.monotonic()
        if progress != self._last_progress:
            self._last_progress, self._progress_at = progress, now
        elif now - self._progress_at > STALL_S:
            raise RuntimeError(f"parallel backtest: no progress for {STALL_S:.0f} s")
        for k, process in enumerate(self.processes):
            if process.exitcode not in (None, 0):
                raise RuntimeError(
                    f"parallel backtest: worker {k} died (exit code {process.exitcode})"
                )

    def receive(self, kind: str) -> tuple[int, Any]:
        """The next message of ``kind`` from any worker: (worker index, payload)."""
        while True:
            try:
                message = self.results.get(timeout=POLL_S)
            except queue.Empty:
                self.tick()
                continue
            if message[0] == "failed":
                raise RuntimeError(f"parallel backtest: worker {message[1]} failed:\n{message[2]}")
            if message[0] != kind:
                raise RuntimeError(f"parallel backtest: expected {kind!r}, got {message[0]!r}")
            return int(message[1]), message[2]

    def send(self, k: int, message: Message) -> None:
        """Queue a message for worker ``k``, waiting (boundedly) while its queue is full."""
        while True:
            try:
                self.tasks[k].put(message, timeout=POLL_S)
                return
            except queue.Full:
                self.tick()


def run_parallel(
    events_path: Path,
    out_path: Path,
    *,
    workers: int,
    outcomes_path: Path | None,
    model_path: Path | None,
    policy_path: Path | None,
    geo: GeoLocator | None,
    on_total: Callable[[int], None],
    on_tick: Callable[[int], None],
) -> ParallelResult:
    """Decide every valid event of a JSON Lines file on ``workers`` processes."""
    geo_paths = (geo.city_path, geo.asn_path, geo.anonymous_path) if geo is not None else None
    ranges = byte_ranges(events_path, workers)
    with tempfile.TemporaryDirectory(prefix=".backtest-", dir=out_path.parent) as tmp:
        configs = [
            WorkerConfig(
                index=k,
                events_path=events_path,
                start=start,
                end=end,
                out_path=Path(tmp) / f"decisions-{k}.jsonl",
                outcomes_path=outcomes_path,
                model_path=model_path,
                policy_path=policy_path,
                geo_paths=geo_paths,
            )
            for k, (start, end) in enumerate(ranges)
        ]
        pool = _Workers(configs, on_tick)
        try:
            pool.start()
            scans: list[ScanResult | None] = [None] * workers
            for _ in range(workers):
                k, scan = pool.receive("scanned")
                scans[k] = scan
            report, order, owner, dealt = _order_and_deal(events_path, scans, workers, pool)
            on_total(order.size)
            for k in range(workers):
                pool.send(k, ("done",))
            decisions: Counter[str] = Counter()
            applied = 0
            for _ in range(workers):
                _, result = pool.receive("finished")
                decisions.update(result.decisions)
                applied += result.outcomes_applied
            pool.tick()
            _merge([config.out_path for config in configs], owner[order], out_path, dealt)
        finally:
            pool.stop()
    return ParallelResult(report, decisions, applied)


def _order_and_deal(
    events_path: Path, scans: list[ScanResult | None], workers: int, pool: _Workers
) -> tuple[LogReport, NDArray[np.intp], NDArray[np.intp], list[int]]:
    """Join the scans, order the events, run the bursts and deal the events out.

    Returns the joined report, the time order (indexes in file order), each
    event's worker (in file order) and how many events each worker was dealt.
    """
    report = LogReport()
    source = str(events_path)
    parts: list[ScanResult] = []
    vocabulary: dict[str, int] = {}
    networks: list[NDArray[np.int32]] = []
    lines_before = 0
    for scan in scans:
        assert scan is not None
        parts.append(scan)
        report.lines += scan.report.lines
        report.events += scan.report.events
        report.bad += scan.report.bad
        report.skipped += scan.report.skipped
        # Each worker kept its range's first problems; in file order, the first overall.
        report.problems.extend(
            BadLine(source, problem.line + lines_before, problem.message, problem.field)
            for problem in scan.report.problems
        )
        lines_before += scan.physical_lines
        # Network names to ids shared by all workers.
        remap = np.asarray(
            [vocabulary.setdefault(name, len(vocabulary)) for name in scan.vocabulary],
            dtype=np.int32,
        )
        networks.append(remap[scan.networks] if scan.networks.size else scan.networks)
    del report.problems[MAX_KEPT_PROBLEMS:]
    offsets = np.concatenate([p.offsets for p in parts])
    stamps = np.concatenate([p.stamps for p in parts])
    user_keys = np.concatenate([p.user_keys for p in parts])
    ip_keys = np.concatenate([p.ip_keys for p in parts])
    network = np.concatenate(networks)
    failed = np.concatenate([p.failed for p in parts])
    # Only the joined arrays from here on: let the per-worker copies go.
    del parts, scans[:]
    names = list(vocabulary)
    for k in range(workers):
        pool.send(k, ("vocabulary", names))
    # Stable: events at the same instant keep their file order, as in one process.
    order = np.argsort(stamps, kind="stable")
    owner = (user_keys % np.uint64(workers)).astype(np.intp)
    dealt = [0] * workers
    table = TrimmedBurstTable()
    # One string per user, shared by all of its entries in the windows.
    user_text: dict[int, str] = {}
    for first in range(0, order.size, CHUNK_EVENTS):
        index = order[first : first + CHUNK_EVENTS]
        chunk_stamps = stamps[index]
        counts = np.empty((index.size, 4), dtype=np.int64)
        rows = zip(
            chunk_stamps.tolist(),
            ip_keys[index].tolist(),
            network[index].tolist(),
            user_keys[index].tolist(),
            failed[index].tolist(),
            strict=True,
        )
        values: list[tuple[int, int, int, int]] = []
        for now, ip, net, user, fail in rows:
            ip_key, name = key_text(ip), names[net]
            c = table.counts(ip_key, name, now)
            values.append((c.ip_users, c.ip_failures, c.network_users, c.network_failures))
            text = user_text.get(user)
            if text is None:
                text = user_text[user] = key_text(user)
            table.record(ip_key, name, text, now, fail)
        counts[:] = values
        if (first + CHUNK_EVENTS) % TRIM_EVERY == 0:
            table.trim(float(chunk_stamps[-1]))
        chunk_owner = owner[index]
        for k in range(workers):
            mine = chunk_owner == k
            if not mine.any():
                continue
            dealt[k] += int(mine.sum())
            pool.send(
                k,
                (
                    "deal",
                    {
                        "offsets": offsets[index[mine]],
                        "stamps": chunk_stamps[mine],
                        "user_keys": user_keys[index[mine]],
                        "ip_keys": ip_keys[index[mine]],
                        "networks": network[index[mine]],
                        "failed": failed[index[mine]],
                        "counts": counts[mine],
                    },
                ),
            )
        pool.tick()
    return report, order, owner, dealt


def _merge(paths: list[Path], owners: NDArray[np.intp], out_path: Path, dealt: list[int]) -> None:
    """Write the workers' decisions in the global order: event i's comes from its owner."""
    handles = [path.open("rb") for path in paths]
    try:
        readers = [handle.readline for handle in handles]
        with out_path.open("wb") as out:
            write = out.write
            for first in range(0, owners.size, 65536):
                for k in owners[first : first + 65536].tolist():
                    line = readers[k]()
                    if not line:
                        raise RuntimeError(f"parallel backtest: worker {k} wrote too few decisions")
                    write(line)
        for k, handle in enumerate(handles):
            if handle.readline():
                raise RuntimeError(f"parallel backtest: worker {k} wrote more than {dealt[k]}")
    finally:
        for handle in handles:
            handle.close()


def default_workers() -> int:
    """The cores this process may use, at most four (the parent's serial part caps the gain)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))
