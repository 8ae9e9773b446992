"""A saturated worker's decisions with the audit writer thread and with synchronous appends.

``Service.decide`` (the engine, its audit record and metrics: what the endpoint
calls, without HTTP) runs back to back on one thread, as a worker's event loop
does under more load than it can take, over a SQLite store, with the decision log
off so that only the audit differs. Each mode has a Service of its own (own store
and audit log); the modes take turns, ``--rounds`` times, each round ending with
the audit flushed, so no mode leaves work for later. Printed per mode, as medians
over the rounds: decisions/s, CPU per decision on the deciding thread and on each
other thread of the process (the audit writer, the SQLite store's maintenance
thread), and how often each of those woke up (voluntary context switches). A
worker's throughput is what its deciding thread can do while the other threads
take the interpreter lock from it now and then, so decisions/s is the figure that
decides; the per-thread CPU says where the rest went. Last, the parts of one
audit record alone: sealing it, and appending it alone or in batches.

    .venv/bin/python benchmarks/bench_audit.py [--decisions 3000] [--rounds 4]
        [--modes sync,thread] [--flush-ms 5]

``--modes sync`` also runs on a version without the writer thread (before it).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from bench_http import event_body
from reference import core_mode, python_speed

from risk_engine.api.metrics import Metrics
from risk_engine.api.service import Service
from risk_engine.assembly import build_engine
from risk_engine.audit import AuditKey, AuditLog, RecordKind, decision_record
from risk_engine.config import Settings
from risk_engine.events import Event, parse_event

SECRET = "bench-audit-secret-" + "0" * 32
USERS = 2000


@dataclass
class Round:
    """One mode's run of ``--decisions``: wall time, and per thread name (CPU s, wake-ups)."""

    seconds: float
    threads: dict[str, tuple[float, int]]


def thread_stats() -> dict[str, tuple[float, int]]:
    """Each thread of this process by name: (CPU seconds on it, voluntary context switches)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, tuple[float, int]] = {}
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            cpu_ns = int((task / "schedstat").read_text().split()[0])
            status = (task / "status").read_text()
        except (OSError, ValueError, IndexError):
            continue
        found = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.MULTILINE)
        tid = int(task.name)
        name = "deciding" if tid == threading.main_thread().native_id else names.get(tid, "other")
        cpu, switches = out.get(name, (0.0, 0))
        out[name] = (cpu + cpu_ns / 1e9, switches + (int(found.group(1)) if found else 0))
    return out


def events(count: int, start: int) -> list[Event]:
    """``count`` events of the HTTP benchmark's load (2,000 users, each with its address)."""
    return [parse_event(orjson.loads(event_body(0, start + i, USERS))) for i in range(count)]


def build(workdir: Path, mode: str, flush_ms: float) -> Service:
    var = workdir / mode
    audit: dict[str, float] = {}
    if "audit_queue_records" in Settings.model_fields:
        audit = {"audit_queue_records": 0 if mode == "sync" else 256, "audit_flush_ms": flush_ms}
    elif mode != "sync":
        sys.exit("this version has no audit writer thread: run --modes sync")
    settings = Settings(
        store=f"sqlite:///{var / 'profiles.db'}",
        var_dir=var,
        secret=SECRET,
        decision_log="off",
        **audit,  # type: ignore[arg-type]
    )
    return Service(settings, build_engine(settings), metrics=Metrics(), owns_engine=True)


def flush(service: Service) -> None:
    """Wait for the audit writer (a version without one has nothing to wait for)."""
    wait = getattr(service, "flush_audit", None)
    if wait is not None:
        wait()


def run(service: Service, batch: list[Event]) -> Round:
    before = thread_stats()
    started = time.perf_counter()
    for event in batch:
        service.decide(event)
    flush(service)
    seconds = time.perf_counter() - started
    after = thread_stats()
    threads = {
        name: (cpu - before.get(name, (0.0, 0))[0], switches - before.get(name, (0.0, 0))[1])
        for name, (cpu, switches) in after.items()
    }
    return Round(seconds, threads)


def append_costs(service: Service, batch: list[Event], workdir: Path) -> None:
    """The parts of an audit record alone, on one thread: sealing, appending one, in batches."""
    decided = [(event, service.decide(event)) for event in batch]
    hasher = service.engine.hasher
    started = time.thread_time()
    made = [decision_record(e, d, d.features, hasher) for e, d in decided]
    seal_us = (time.thread_time() - started) / len(made) * 1e6
    log = AuditLog(workdir / "append-costs.jsonl", AuditKey("k" * 40, source="bench"))
    try:
        costs = []
        for size in (1, 8, 32):
            started = time.thread_time()
            for first in range(0, len(made), size):
                log.append_many([(RecordKind.DECISION, r) for r in made[first : first + size]])
            costs.append(f"{size} a batch {(time.thread_time() - started) / len(made) * 1e6:.1f}")
    finally:
        log.close()
    print(
        f"audit record alone: sealing (decision_record) {seal_us:.1f} us;"
        f" appending, us a record: {', '.join(costs)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--decisions", type=int, default=3000, help="decisions per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per mode, alternating")
    parser.add_argument("--modes", default="sync,thread", help="sync and/or thread")
    parser.add_argument("--flush-ms", type=float, default=5.0, help="the writer's batch age")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if not set(modes) <= {"sync", "thread"} or not 0 < args.decisions <= 100_000:
        parser.error("--modes takes sync,thread; --decisions 1 to 100,000")
    print(f"python {platform.python_version()} on {platform.platform()}")
    print(python_speed())
    print(core_mode())
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"{os.cpu_count()} CPUs; load average {load}")
    print(
        f"{args.decisions} decisions a round, {args.rounds} rounds a mode, SQLite store,"
        f" decision log off, audit writer batches at {args.flush_ms:g} ms"
    )
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        services = {mode: build(Path(tmp), mode, args.flush_ms) for mode in modes}
        rounds: dict[str, list[Round]] = {mode: [] for mode in modes}
        try:
            # Each mode first learns every user once, so the rounds time warm profiles.
            for service in services.values():
                for event in events(USERS, 0):
                    service.decide(event)
                flush(service)
            counter = USERS
            for number in range(args.rounds):
                order = modes if number % 2 == 0 else modes[::-1]
                batch = events(args.decisions, counter)
                counter += args.decisions
                for mode in order:
                    rounds[mode].append(run(services[mode], batch))
            append_costs(services[modes[0]], events(1000, counter), Path(tmp))
        finally:
            for service in services.values():
                service.close()
    n = args.decisions
    for mode in modes:
        runs = rounds[mode]
        rates = [n / r.seconds for r in runs]
        print(
            f"{mode:<8} {statistics.median(rates):8,.0f} decisions/s"
            f" (rounds {min(rates):,.0f}-{max(rates):,.0f})"
        )
        for name in sorted({name for r in runs for name in r.threads}):
            cpu = statistics.median(r.threads.get(name, (0.0, 0))[0] / n * 1e6 for r in runs)
            wakeups = statistics.median(r.threads.get(name, (0.0, 0))[1] / r.seconds for r in runs)
            if cpu >= 0.05:
                print(f"  {name:<34} {cpu:7.1f} us CPU a decision, {wakeups:7.0f} wake-ups/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
