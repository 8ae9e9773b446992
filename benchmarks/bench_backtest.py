"""Backtest (or training) throughput (events/s) and peak memory, at 100,000 and 1,000,000 events.

The contract asks for a million events on two cores without running out of
memory. The events are a seeded simulation (20,000 users, 30 days, about 1.07
million events, generated into a temporary directory unless ``--events`` names a
file); the first 100,000 and 1,000,000 lines are replayed, each run in a child
process so that its memory is its own. Peak memory is sampled every 100 ms over
the whole process tree (the parent and its workers), summed, and also reported
for the largest single process. The backtest runs as ``risk-engine backtest``
does by default (a local Dask cluster, one worker per core, for large inputs),
or on ``--workers N`` local Dask workers (1: one process), or on the Dask
cluster at ``--scheduler ADDRESS`` (then only the client's memory is measured
here: the workers are not this process's children).

``--command train`` measures ``risk-engine train`` the same way (the simulation's
labels, no synthesized attacks): the replay to features on the same engine, the
bounded sample on the client, and the fit. Peak memory is given for the client
and for each worker.

    .venv/bin/python benchmarks/bench_backtest.py [--sizes 100000,1000000] [--workers N]
        [--scheduler tcp://host:8786] [--command backtest|train]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil
from reference import core_mode, python_speed

SAMPLE_S = 0.1
# A run that takes longer than this is stopped (a bound, not an expectation).
RUN_TIMEOUT_S = 3600.0


def simulate(workdir: Path, users: int, days: int, seed: int) -> Path:
    """The seeded simulation, written with the package's own simulator."""
    from risk_engine.offline.simulate.simulator import SimulationConfig, write_simulation

    events = workdir / "simulated.jsonl"
    config = SimulationConfig(
        users=users, days=days, seed=seed, start=datetime(2026, 1, 5, tzinfo=UTC)
    )
    started = time.perf_counter()
    summary = write_simulation(config, events, workdir / "labels.jsonl", None)
    print(f"simulated {summary.events:,} events in {time.perf_counter() - started:.0f} s")
    return events


def first_lines(source: Path, count: int, target: Path) -> int:
    """Copy the first ``count`` lines of ``source``; how many there were."""
    written = 0
    with source.open("rb") as src, target.open("wb") as dst:
        for line in src:
            if written >= count:
                break
            dst.write(line)
            written += 1
    return written


def child_train(
    events: Path, out: Path, labels: Path | None, options: dict[str, Any]
) -> dict[str, Any]:
    """One training run: what the summary line needs."""
    from risk_engine.offline.train import train

    started = time.perf_counter()
    artifact, table = train(
        [events],
        out.with_suffix(".npz"),
        labels=[labels] if labels is not None else None,
        synthesize=False,
        progress=False,
        **options,
    )
    return {
        "events": artifact.training["events"],
        "seconds": time.perf_counter() - started,
        "decisions": {"sample_rows": int(table.X.shape[0])},
        "model_version": artifact.model_version,
        "engine": "train",
    }


def child_run(
    events: Path,
    out: Path,
    workers: int | None,
    scheduler: str | None,
    model: Path | None,
    command: str = "backtest",
    labels: Path | None = None,
) -> None:
    """In the child: one backtest (or training), its summary as JSON on stdout."""
    from risk_engine.offline.backtest import run_backtest

    # Only what was asked: the options are newer than the one-process backtest.
    options: dict[str, object] = {"workers": workers} if workers is not None else {}
    if scheduler is not None:
        options["scheduler"] = scheduler
    if command == "train":
        print(json.dumps(child_train(events, out, labels, options)))
        return
    summary = run_backtest(events, out, model_path=model, progress=False, **options)
    print(
        json.dumps(
            {
                "events": summary.events,
                "seconds": summary.seconds,
                "decisions": dict(summary.decisions),
                "model_version": summary.model_version,
                "engine": getattr(summary, "engine", "one process"),
            }
        )
    )


def measure(
    events: Path,
    out: Path,
    workers: int | None,
    scheduler: str | None,
    model: Path | None,
    what: str = "backtest",
    labels: Path | None = None,
) -> dict[str, Any]:
    """Run one backtest (or training) in a child process; its summary plus peak memory."""
    command = [sys.executable, __file__, "--child", str(events), str(out), "--command", what]
    if labels is not None:
        command += ["--labels", str(labels)]
    if workers is not None:
        command += ["--workers", str(workers)]
    if scheduler is not None:
        command += ["--scheduler", scheduler]
    if model is not None:
        command += ["--model", str(model)]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    root = psutil.Process(child.pid)
    peak_total = 0
    peak_single: dict[int, int] = {}
    # CPU seconds per process, as last seen: on a shared machine, events per CPU-second
    # is the figure that does not move with the neighbours' load.
    cpu: dict[int, float] = {}
    roles: dict[int, str] = {child.pid: "parent"}
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while child.poll() is None:
        if time.monotonic() > deadline:
            child.kill()
            raise RuntimeError(f"backtest of {events} exceeded {RUN_TIMEOUT_S:.0f} s")
        total = 0
        try:
            for process in (root, *root.children(recursive=True)):
                rss = process.memory_info().rss
                times = process.cpu_times()
                cpu[process.pid] = times.user + times.system
                total += rss
                peak_single[process.pid] = max(peak_single.get(process.pid, 0), rss)
                if process.pid not in roles:
                    command_line = " ".join(process.cmdline())
                    roles[process.pid] = (
                        "helper" if "resource_tracker" in command_line else "worker"
                    )
        except psutil.Error:
            pass  # a process ended between listing and reading: the next sample has it
        peak_total = max(peak_total, total)
        time.sleep(SAMPLE_S)
    stdout, _ = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"backtest of {events} failed with exit status {child.returncode}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - started
    result["peak_total_mb"] = peak_total / 2**20
    result["peak_single_mb"] = max(peak_single.values(), default=0) / 2**20
    result["processes"] = len(peak_single)
    for role in ("parent", "worker", "helper"):
        peaks = [rss for pid, rss in peak_single.items() if roles.get(pid) == role]
        result[f"peak_{role}_mb"] = max(peaks, default=0) / 2**20
    result["cpu_s"] = sum(cpu.values())
    result["peak_each_worker_mb"] = [
        round(rss / 2**20) for pid, rss in sorted(peak_single.items()) if roles[pid] == "worker"
    ]
    return result


def print_versions() -> None:
    print(f"python {platform.python_version()} on {platform.platform()}")
    print(python_speed())
    print(core_mode())
    names = ("numpy", "scikit-learn", "pydantic", "orjson", "geoip2", "maxminddb", "psutil")
    print(", ".join(f"{name} {version(name)}" for name in names))
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"{os.cpu_count()} CPUs; load average {load}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=Path, help="a JSON Lines log (default: simulate one)")
    parser.add_argument("--sizes", default="100000,1000000", help="events per run")
    parser.add_argument("--workers", type=int, help="local Dask workers (default: automatic)")
    parser.add_argument("--scheduler", help="a Dask scheduler to run on (default: local)")
    parser.add_argument("--model", type=Path, help="model artifact (default: bundled)")
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--command", choices=("backtest", "train"), default="backtest")
    parser.add_argument(
        "--labels", type=Path, help="labels for --command train (default: the simulation's)"
    )
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_run(
            args.child[0],
            args.child[1],
            args.workers,
            args.scheduler,
            args.model,
            args.command,
            args.labels,
        )
        return 0

    print_versions()
    sizes = [int(size) for size in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-backtest-") as tmp:
        workdir = Path(tmp)
        source = args.events or simulate(workdir, args.users, args.days, args.seed)
        labels = args.labels or (None if args.events else workdir / "labels.jsonl")
        print(f"command: {args.command}")
        results = []
        for size in sizes:
            events = workdir / f"events-{size}.jsonl"
            lines = first_lines(source, size, events)
            result = measure(
                events,
                workdir / f"decisions-{size}.jsonl",
                args.workers,
                args.scheduler,
                args.model,
                args.command,
                labels if args.command == "train" else None,
            )
            events.unlink()
            results.append(result)
            print(
                f"{lines:>9,} lines: {result['events']:>9,} events in {result['seconds']:7.1f} s"
                f" = {result['events'] / result['seconds']:8,.0f} events/s"
                f" (wall {result['wall']:.1f} s with start-up;"
                f" {result['cpu_s']:.0f} CPU-s, {result['events'] / result['cpu_s']:,.0f}"
                f" events per CPU-s);"
                f" peak RSS {result['peak_total_mb']:7.0f} MB over {result['processes']}"
                f" processes, largest process {result['peak_single_mb']:.0f} MB"
                f" (client {result['peak_parent_mb']:.0f} MB, each worker"
                f" {result['peak_each_worker_mb']} MB); {result['engine']}"
            )
        if len(results) > 1:
            first, last = results[0], results[-1]
            print(
                f"events x{last['events'] / first['events']:.1f} ->"
                f" peak RSS x{last['peak_total_mb'] / first['peak_total_mb']:.2f}"
                f" (largest process x{last['peak_single_mb'] / first['peak_single_mb']:.2f})"
            )
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"load average at the end {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
