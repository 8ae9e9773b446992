"""In-process decision cost (``Engine.decide``), median and p99, per phase and per store.

A seeded simulation is replayed through one engine per store (memory, SQLite with
its profile cache and without it, Redis): the first events warm the profiles up,
the rest are timed. One run times
``decide`` bare, for the headline figures; a second run wraps the functions the
engine calls (GeoIP lookup, store read and write, features, model, policy, ...)
in timers, for the breakdown, so the engine's own code path is never changed.
A last run on the SQLite store shows what ``gc.freeze()`` after start-up does to
the tail: the collector then no longer walks the objects loaded at start-up.
The model alone is timed too, on the feature rows of the replay: the fast path
(``RiskModel.score_one``) against scikit-learn's own single-row calls, with the
largest difference between their raw scores; a loaded model is arrays only, so
scikit-learn's detectors come from a model fitted here on the replay's rows.
Last, the burst counts of a busy network (an office or a carrier NAT: its
window always full) against the walk over the window that counting took before
the windows kept their counts, with events arriving in time order and shuffled
(``--bursts-only`` runs this part alone).

    .venv/bin/python benchmarks/bench_engine.py [--users 1000] [--days 14]
        [--stores memory,sqlite,sqlite-uncached,redis] [--model PATH]
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import redis
from reference import core_mode, python_speed

import risk_engine.engine as engine_module
from risk_engine.assembly import load_scorer
from risk_engine.engine import Engine
from risk_engine.errors import ProfileStoreError
from risk_engine.events import Event
from risk_engine.geo import GeoLocator
from risk_engine.model.detector import DetectorParams, RiskModel
from risk_engine.offline.logs import LogReport, events_in_time_order
from risk_engine.offline.simulate.simulator import SimulationConfig, write_simulation
from risk_engine.policy import PolicyTable
from risk_engine.privacy import Hasher
from risk_engine.profiles import (
    BurstCounts,
    BurstNote,
    MemoryStore,
    Profile,
    ProfileStore,
    RedisStore,
    SQLiteStore,
)
from risk_engine.profiles.bursts import BurstTable, walk
from risk_engine.profiles.store import BURST_MAX_ENTRIES

T = TypeVar("T")
CLOCK = time.perf_counter
PHASES = (
    "geoip",
    "observe",
    "store_read",
    "features",
    "model",
    "reasons",
    "policy",
    "learn",
    "store_write",
    "challenge",
    "other",
)


class Phases:
    """Seconds spent per phase during the current event, then per event over the run."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.samples: dict[str, list[float]] = defaultdict(list)

    def timed(self, phase: str, fn: Callable[..., T]) -> Callable[..., T]:
        """``fn`` with its time added to ``phase``."""

        def wrapper(*args: Any, **kwargs: Any) -> T:
            start = CLOCK()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[phase] += CLOCK() - start

        return wrapper

    def close_event(self, total: float) -> None:
        accounted = 0.0
        for phase in PHASES[:-1]:
            value = self.current.get(phase, 0.0)
            self.samples[phase].append(value)
            accounted += value
        self.samples["other"].append(max(0.0, total - accounted))
        self.samples["total"].append(total)
        self.current.clear()


@contextmanager
def instrumented(engine: Engine, phases: Phases) -> Iterator[None]:
    """Wrap what ``decide`` calls in timers; everything is put back on exit."""
    store: Any = engine.store
    real_update_event = store.update_event

    def update_event(note: BurstNote, fn: Callable[[Profile, BurstCounts], T]) -> T:
        marks: list[float] = []

        def inner(profile: Profile, bursts: BurstCounts) -> T:
            marks.append(CLOCK())
            try:
                return fn(profile, bursts)
            finally:
                marks.append(CLOCK())

        start = CLOCK()
        result: T = real_update_event(note, inner)
        end = CLOCK()
        # Burst counts and the profile are read before ``fn``; both are written after it.
        phases.current["store_read"] += marks[0] - start
        phases.current["store_write"] += end - marks[-1]
        return result

    module_patches = {
        "observe": "observe",
        "compute_features": "features",
        "explain": "reasons",
        "learn": "learn",
        "hold_pending": "learn",
    }
    saved_module = {name: getattr(engine_module, name) for name in module_patches}
    model: Any = engine._live().artifact.model
    real_decide = PolicyTable.decide
    real_geo = engine.geo.lookup
    try:
        for name, phase in module_patches.items():
            setattr(engine_module, name, phases.timed(phase, saved_module[name]))
        model.score_one = phases.timed("model", model.score_one)
        PolicyTable.decide = phases.timed("policy", real_decide)  # type: ignore[method-assign]
        engine.geo.lookup = phases.timed("geoip", real_geo)  # type: ignore[method-assign]
        store.update_event = update_event
        store.save_challenge = phases.timed("challenge", store.save_challenge)
        yield
    finally:
        for name, fn in saved_module.items():
            setattr(engine_module, name, fn)
        PolicyTable.decide = real_decide  # type: ignore[method-assign]
        # The wrappers were set on the instances: deleting them uncovers the methods.
        del model.score_one, engine.geo.lookup
        del store.update_event, store.save_challenge


def simulated_events(workdir: Path, users: int, days: int, seed: int) -> Path:
    """A seeded simulation written under ``workdir`` (JSON Lines)."""
    events = workdir / "events.jsonl"
    config = SimulationConfig(
        users=users, days=days, seed=seed, start=datetime(2026, 1, 5, tzinfo=UTC)
    )
    write_simulation(config, events, workdir / "labels.jsonl", None)
    return events


def load_events(path: Path, limit: int) -> list[Event]:
    report = LogReport()
    out: list[Event] = []
    for event in events_in_time_order(path, report):
        out.append(event)
        if len(out) >= limit:
            break
    return out


def build(store: ProfileStore, geo: GeoLocator, model: Path | None) -> Engine:
    return Engine(
        store=store, geo=geo, scorer=load_scorer(model, None), hasher=Hasher("bench-secret")
    )


def replay(engine: Engine, events: list[Event], phases: Phases | None) -> list[float]:
    """Decide every event, as the HTTP service does; seconds per timed decision."""
    totals: list[float] = []
    for event in events:
        start = CLOCK()
        engine.decide(event)
        elapsed = CLOCK() - start
        totals.append(elapsed)
        if phases is not None:
            phases.close_event(elapsed)
    return totals


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def us(seconds: float) -> str:
    return f"{seconds * 1e6:9.1f}"


def collect_rows(engine: Engine, events: list[Event]) -> list[list[float]]:
    """The feature rows ``decide`` computes for ``events`` (the engine's own features)."""
    rows: list[list[float]] = []
    real = engine_module.compute_features

    def keep(*args: Any) -> list[float]:
        values = real(*args)
        rows.append(values)
        return values

    engine_module.compute_features = keep  # type: ignore[assignment]
    try:
        replay(engine, events, None)
    finally:
        engine_module.compute_features = real  # type: ignore[assignment]
    return rows


def model_alone(engine: Engine, rows: list[list[float]]) -> None:
    """One row at a time: the fast path, then scikit-learn, on the same feature rows."""
    model: Any = engine._live().artifact.model
    X = np.asarray(rows, dtype=np.float64)
    for row in X[:200]:
        model.score_one(row)  # warm
    fast = []
    for row in X:
        start = CLOCK()
        model.score_one(row)
        fast.append(CLOCK() - start)
    print(
        f"\nmodel alone ({model.kind}, {X.shape[0]} rows of the replay):"
        f" RiskModel.score_one median {us(statistics.median(fast))} µs"
        f"  p99 {us(percentile(fast, 0.99))} µs"
    )
    reference = X[:300]
    # The loaded model has no scikit-learn objects: fit one (its riskiest rows as the attacks).
    attack = model.score(X) >= np.quantile(model.score(X), 0.99)
    fitted = RiskModel(DetectorParams(supervised_min_attacks=1)).fit(X, attack)
    assert fitted.detector_ is not None and fitted._fast_forest is not None
    parts: list[tuple[str, Callable[[Any], Any], Callable[[Any], float]]] = [
        (
            "IsolationForest.score_samples",
            fitted.detector_.score_samples,
            fitted._fast_forest.score_one,
        )
    ]
    if fitted.supervised_ is not None and fitted._fast_boosting is not None:
        parts.append(
            (
                "HistGradientBoosting.decision_function",
                fitted.supervised_.decision_function,
                fitted._fast_boosting.decision_one,
            )
        )
    for name, sklearn_one, fast_one in parts:
        times = []
        gap = 0.0
        for row in reference:
            start = CLOCK()
            expected = float(sklearn_one(row[None, :])[0])
            times.append(CLOCK() - start)
            gap = max(gap, abs(fast_one(row) - expected))
        print(
            f"  scikit-learn {name} on one row: median {us(statistics.median(times))} µs;"
            f" largest |fast path - scikit-learn| {gap:.1e}"
        )


def report_run(name: str, totals: list[float], phases: Phases) -> None:
    print(
        f"\n{name}: decide median {us(statistics.median(totals))} µs   "
        f"p99 {us(percentile(totals, 0.99))} µs   max {us(max(totals))} µs   "
        f"({len(totals)} events, bare run)"
    )
    print(f"  {'phase':<13} {'median µs':>10} {'p99 µs':>10} {'mean µs':>10}  (instrumented run)")
    for phase in (*PHASES, "total"):
        values = phases.samples[phase]
        print(
            f"  {phase:<13} {us(statistics.median(values)):>10} "
            f"{us(percentile(values, 0.99)):>10} {us(statistics.fmean(values)):>10}"
        )


class FullCollections:
    """Counts and times the collector's generation-2 passes (gc.callbacks)."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._start = CLOCK()
        else:
            self.pauses.append(CLOCK() - self._start)

    def __enter__(self) -> FullCollections:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def gc_comparison(
    make_store: Callable[[], ProfileStore], geo: GeoLocator, model: Path | None, events: list[Event]
) -> None:
    """Tail latency with the default collector, then with gc.freeze() after start-up."""
    split = len(events) // 2
    for frozen in (False, True):
        store = make_store()
        try:
            engine = build(store, geo, model)
            replay(engine, events[:split], None)
            gc.collect()
            if frozen:
                gc.freeze()
            tracked = len(gc.get_objects())
            # What one full collection costs now, as the collector would run it.
            start = CLOCK()
            gc.collect()
            full_ms = (CLOCK() - start) * 1e3
            with FullCollections() as full:
                totals = replay(engine, events[split:], None)
            state = "on " if frozen else "off"
            print(
                f"  gc.freeze() {state}: {tracked:,} objects for the collector to walk"
                f" ({gc.get_freeze_count():,} frozen); one full collection {full_ms:.1f} ms"
            )
            print(
                f"      decide median {us(statistics.median(totals))} µs"
                f"  p99 {us(percentile(totals, 0.99))} µs"
                f"  p99.9 {us(percentile(totals, 0.999))} µs  max {us(max(totals))} µs;"
                f" {len(full.pauses)} full collections during the run"
                + (f", {max(full.pauses) * 1e3:.1f} ms the longest" if full.pauses else "")
            )
        finally:
            gc.unfreeze()
            store.close()


def redis_server_version(url: str) -> str:
    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        return str(client.info("server").get("redis_version", "?"))
    except redis.RedisError as exc:
        return f"unreachable ({exc})"
    finally:
        client.close()


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5.0)
    try:
        keys = list(client.scan_iter(match=f"{prefix}-*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()


def print_versions(redis_url: str) -> None:
    print(f"python {platform.python_version()} on {platform.platform()}")
    print(python_speed())
    print(core_mode())
    names = ("numpy", "scikit-learn", "pydantic", "orjson", "geoip2", "maxminddb", "redis")
    print(", ".join(f"{name} {version(name)}" for name in names))
    print(f"sqlite {sqlite3.sqlite_version}, redis server {redis_server_version(redis_url)}")


def arrival(count: int, block: int, seed: int = 5) -> list[float]:
    """Event times 7 s apart (an office, a carrier NAT), arriving shuffled within blocks.

    ``block`` 1 is time order; 16 lets an event arrive up to 105 s late or early, as
    app servers behind a load balancer might send them; 128, up to 15 minutes.
    """
    rng = random.Random(seed)
    times = [1_000_000.0 + 7.0 * k for k in range(count)]
    for first in range(0, count, block):
        part = times[first : first + block]
        rng.shuffle(part)
        times[first : first + block] = part
    return times


def busy_network(samples: int = 2000) -> None:
    """Burst counts where one network sends an event every 7 s (an office, a carrier NAT).

    Its window then always holds BURST_MAX_ENTRIES entries inside the hour. As the
    store does, each event's counts (the address's short window and the network's
    full one) are taken at its own time, then it is recorded; they are timed against
    ``walk`` over the network's window alone, in time order and shuffled.
    """
    print(f"\nbusy network ({BURST_MAX_ENTRIES} events in the hour from one /24):")
    orders = (
        (1, "in time order"),
        (16, "shuffled in blocks of 16 (+-105 s)"),
        (128, "shuffled in blocks of 128 (+-15 min)"),
    )
    for block, label in orders:
        times = arrival(BURST_MAX_ENTRIES + samples, block)
        table = BurstTable()
        for k, ts in enumerate(times[:BURST_MAX_ENTRIES]):
            table.counts(f"a{k % 64}", "office", ts)
            table.record(f"a{k % 64}", "office", f"u{k % 300}", ts, k % 20 == 0)
        counted, recorded, walked = [], [], []
        window = table._windows["net:office"]  # the walk below reads its entries
        for k, ts in enumerate(times[BURST_MAX_ENTRIES:]):
            start = CLOCK()
            table.counts(f"a{k % 64}", "office", ts)
            counted.append(CLOCK() - start)
            start = CLOCK()
            walk(window.entries, ts)
            walked.append(CLOCK() - start)
            start = CLOCK()
            table.record(f"a{k % 64}", "office", f"u{k % 300}", ts, k % 20 == 0)
            recorded.append(CLOCK() - start)
        print(
            f"  {label:36} counts median {statistics.median(counted) * 1e6:5.1f} µs,"
            f" p99 {percentile(counted, 0.99) * 1e6:5.1f} µs;"
            f" record median {statistics.median(recorded) * 1e6:4.1f} µs"
            f" (the walk, network window alone: {statistics.median(walked) * 1e6:.1f} µs)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=Path, help="events to replay (default: simulate)")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--limit", type=int, default=24000, help="events read at most")
    parser.add_argument("--warmup", type=float, default=0.5, help="share of events not timed")
    parser.add_argument("--stores", default="memory,sqlite,sqlite-uncached,redis")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--model", type=Path, help="model artifact (default: bundled)")
    parser.add_argument("--no-gc", action="store_true", help="skip the gc.freeze() comparison")
    parser.add_argument("--bursts-only", action="store_true", help="only the busy network")
    args = parser.parse_args()
    if args.bursts_only:
        print(core_mode())
        busy_network()
        return 0

    print_versions(args.redis_url)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        started = CLOCK()
        path = args.events or simulated_events(workdir, args.users, args.days, args.seed)
        events = load_events(path, args.limit)
        split = int(len(events) * args.warmup)
        warm, timed = events[:split], events[split:]
        print(
            f"{len(events)} events from {path.name} ({CLOCK() - started:.1f} s to prepare):"
            f" {len(warm)} warm the profiles up, {len(timed)} are timed"
        )
        geo = GeoLocator()
        # One prefix per store object, so that no run sees the profiles of another.
        redis_prefix = f"risk-engine-bench-{uuid.uuid4().hex}"
        makers: dict[str, Callable[[], ProfileStore]] = {
            "memory": MemoryStore,
            "sqlite": lambda: SQLiteStore(workdir / f"bench-{uuid.uuid4().hex}.db"),
            # Every update reads and decodes its row: a user the cache does not hold.
            "sqlite-uncached": lambda: SQLiteStore(
                workdir / f"bench-{uuid.uuid4().hex}.db", cache_profiles=0
            ),
            "redis": lambda: RedisStore(
                args.redis_url, prefix=f"{redis_prefix}-{uuid.uuid4().hex}"
            ),
        }
        try:
            for name in args.stores.split(","):
                store = makers[name]()
                try:
                    store.ping()
                except ProfileStoreError as exc:
                    print(f"\n{name}: skipped ({exc})")
                    continue
                try:
                    engine = build(store, geo, args.model)
                    replay(engine, warm, None)
                    totals = replay(engine, timed, None)
                finally:
                    store.close()
                # The breakdown replays the same events into a fresh store of the kind.
                store = makers[name]()
                try:
                    engine = build(store, geo, args.model)
                    replay(engine, warm, None)
                    phases = Phases()
                    with instrumented(engine, phases):
                        replay(engine, timed, phases)
                finally:
                    store.close()
                report_run(name, totals, phases)
                if name == "memory":
                    store = MemoryStore()
                    engine = build(store, geo, args.model)
                    model_alone(engine, collect_rows(engine, events))
            busy_network()
            if not args.no_gc and "sqlite" in args.stores:
                print("\nsqlite, the serving default, tail latency and the collector:")
                gc_comparison(makers["sqlite"], geo, args.model, events)
        finally:
            if "redis" in args.stores:
                delete_prefix(args.redis_url, redis_prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
