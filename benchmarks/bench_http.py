"""HTTP throughput and latency of ``POST /v1/decisions``, next to a no-op FastAPI app.

Starts the real server (``risk-engine serve``: SQLite store, one worker, auth
disabled) on 127.0.0.1 and a free port and, in the same run, a no-op FastAPI app
under the same uvicorn settings (``risk_engine.api.app.server_options``, so they
cannot drift apart); drives each with the same bounded load from 127.0.0.1 and
prints requests/s, p50 and p99 for each and their ratio. For reference it also
drives a bare ASGI no-op (no framework at all: the server's own floor). Then the
real server again with the Redis store and one and two workers. The load comes
from wrk when it is installed (a Lua script varies user_id and event_id per
request), else from an asyncio/httpx client. Only loopback addresses are ever
contacted; every run is bounded in time, every wait in time and count.
``--audit-compare`` instead compares the audit writer thread with synchronous
appends (two SQLite servers, alternating), with the CPU and wake-ups per thread.

    .venv/bin/python benchmarks/bench_http.py [--duration 15] [--connections 16]
        [--client auto|wrk|httpx] [--redis-url redis://127.0.0.1:6379/13] [--gc-compare]
        [--decision-log-compare [--pairs 6]] [--decision-log-only] [--audit-compare]
        [--access-log]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import httpx
import redis
from fastapi import FastAPI, Request, Response
from reference import core_mode, python_speed
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
WARMUP_S = 3.0
# Per-client cap on requests, whatever the duration: every loop is bounded twice.
MAX_REQUESTS = 2_000_000
# Each user keeps one address of its own (81.x.y.10: European space that GeoLite2
# places), as real users do; a handful shared by all would look like a botnet.
ADDRESS = "81.{}.{}.10"
USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/131.0.0.0 Safari/537.36"
)
NOOP_DECISION = (
    b'{"event_id":"e","score":0.1,"decision":"allow","reasons":[],"model_version":"noop"}'
)

WRK_SCRIPT = """
-- One event per request; user_id and event_id vary, each user keeps its address.
local counter = 0
local headers = {["Content-Type"] = "application/json"}
local template = '{"event_id":"w%%d-%%d","timestamp":"%%s","user_id":"u-%%d",'
  .. '"action":"%%s","ip":"%%s","session_id":"s-%%d",'
  .. '"device":{"id":"d-%%d","user_agent":"%(ua)s","platform":"Win32",'
  .. '"timezone":"Europe/London","language":"en-GB","screen":"1920x1080"},"success":true}'
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end

function request()
  counter = counter + 1
  local user = (counter * 7919 + tid * 104729) %% %(users)d
  local action = (counter %% 5 == 0) and "transfer" or "login"
  local ip = string.format("81.%%d.%%d.10", math.floor(user / 256) %% 256, user %% 256)
  local body = string.format(template, tid, counter, os.date("!%%Y-%%m-%%dT%%H:%%M:%%SZ"),
    user, action, ip, user, user)
  return wrk.format("POST", "/v1/decisions", headers, body)
end
"""


@dataclass
class Result:
    """One load run against one server."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


# -- the no-op app ------------------------------------------------------------------------


def noop_app() -> FastAPI:
    """A FastAPI app whose decision endpoint reads the body and answers a constant."""
    app = FastAPI()

    @app.post("/v1/decisions")
    async def decide(request: Request) -> Response:
        await request.body()
        return Response(NOOP_DECISION, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def bare_app() -> ASGIApp:
    """The same constant answer from a bare ASGI callable: what uvicorn alone costs."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(NOOP_DECISION)),
    ]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        while (await receive()).get("more_body", False):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": NOOP_DECISION})

    return app


def serve_noop(port: int, factory: str, access_log: bool) -> None:
    """In a child process: a no-op app under the settings ``risk-engine serve`` uses."""
    import uvicorn

    from risk_engine.api.app import server_options

    uvicorn.run(
        f"bench_http:{factory}",
        factory=True,
        host=LOOPBACK,
        port=port,
        workers=1,
        **server_options(access_log=access_log),
    )


def serve_real_unfrozen(arguments: list[str]) -> None:
    """In a child process: ``risk-engine serve`` with gc.freeze() made a no-op."""
    gc.freeze = lambda: None
    from risk_engine.cli import main

    sys.argv = ["risk-engine", *arguments]
    main()


# -- servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def risk_engine_command() -> list[str]:
    script = Path(sys.executable).with_name("risk-engine")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from risk_engine.cli import main; main()"]


@contextlib.contextmanager
def server(command: list[str], port: int, env: dict[str, str], log: Path) -> Iterator[str]:
    """Start a server in its own process group; yield its base URL once it answers."""
    with server_process(command, port, env, log) as (base, _):
        yield base


@contextlib.contextmanager
def server_process(
    command: list[str], port: int, env: dict[str, str], log: Path
) -> Iterator[tuple[str, int]]:
    """As ``server``, yielding the base URL and the server's process id."""
    # The access log goes to a file: an undrained pipe would fill and stall the server.
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            env={**os.environ, **env},
            start_new_session=True,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    base = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"server exited ({process.returncode}): {tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer within {START_TIMEOUT_S:.0f} s")
            try:
                if httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield base, process.pid
    finally:
        # The group holds the server and, with several workers, its worker processes.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)


# -- load ---------------------------------------------------------------------------------


def wrk_run(base: str, duration: float, connections: int, threads: int, script: Path) -> Result:
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"{base}/v1/decisions",
    ]
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + 60, check=True
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    seconds = _duration_s(re.search(r"requests in ([\d.]+\w+),", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(g) for g in match.groups())
    return Result(requests, seconds, _latency_ms(out, "50%"), _latency_ms(out, "99%"), errors)


def _duration_s(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def _latency_ms(out: str, label: str) -> float:
    match = re.search(rf"^\s*{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    if match is None:
        return float("nan")
    return float(match.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]


def event_body(worker: int, counter: int, users: int) -> bytes:
    user = (counter * 7919 + worker * 104729) % users
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    action = "transfer" if counter % 5 == 0 else "login"
    return (
        f'{{"event_id":"h{worker}-{counter}","timestamp":"{stamp}","user_id":"u-{user}",'
        f'"action":"{action}","ip":"{ADDRESS.format(user // 256 % 256, user % 256)}",'
        f'"session_id":"s-{user}",'
        f'"device":{{"id":"d-{user}","user_agent":"{USER_AGENT}","platform":"Win32",'
        f'"timezone":"Europe/London","language":"en-GB","screen":"1920x1080"}},"success":true}}'
    ).encode()


def httpx_run(base: str, duration: float, connections: int, users: int) -> Result:
    """The fallback load: ``connections`` asyncio clients, each one request at a time."""

    async def client(
        worker: int, http: httpx.AsyncClient, deadline: float
    ) -> tuple[list[float], int]:
        latencies: list[float] = []
        errors = 0
        for counter in range(MAX_REQUESTS):
            if time.monotonic() >= deadline:
                break
            body = event_body(worker, counter, users)
            start = time.perf_counter()
            try:
                response = await http.post(
                    "/v1/decisions", content=body, headers={"Content-Type": "application/json"}
                )
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok
        return latencies, errors

    async def drive() -> Result:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10.0) as http:
            started = time.monotonic()
            deadline = started + duration
            runs = await asyncio.gather(*(client(k, http, deadline) for k in range(connections)))
            seconds = time.monotonic() - started
        latencies = sorted(x for run, _ in runs for x in run)
        errors = sum(e for _, e in runs)
        p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
        return Result(
            len(latencies), seconds, statistics.median(latencies) * 1e3, p99 * 1e3, errors
        )

    return asyncio.run(drive())


def drive(base: str, args: argparse.Namespace, script: Path | None) -> Result:
    """A short warm-up, then the measured run."""
    drive_warm(base, args, script)
    return measured(base, args, script)


def drive_warm(base: str, args: argparse.Namespace, script: Path | None) -> None:
    if script is not None:
        wrk_run(base, WARMUP_S, args.connections, args.threads, script)
    else:
        httpx_run(base, WARMUP_S, args.connections, args.users)


def measured(base: str, args: argparse.Namespace, script: Path | None) -> Result:
    if script is not None:
        return wrk_run(base, args.duration, args.connections, args.threads, script)
    return httpx_run(base, args.duration, args.connections, args.users)


def show(name: str, result: Result) -> None:
    errors = f"; {result.errors} errors" if result.errors else ""
    print(
        f"{name:<34} {result.rps:9,.0f} req/s   p50 {result.p50_ms:7.2f} ms"
        f"   p99 {result.p99_ms:7.2f} ms   ({result.requests:,} requests{errors})"
    )


@dataclass
class CpuTimes:
    """CPU seconds a process spent, on its main thread and on all its other threads."""

    main: float
    others: float


def cpu_times(pid: int) -> CpuTimes:
    """Per-thread CPU time of ``pid`` (Linux /proc; utime + stime of each task)."""
    tick = os.sysconf("SC_CLK_TCK")
    main = others = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended in between
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if int(task.name) == pid:
            main += seconds
        else:
            others += seconds
    return CpuTimes(main, others)


def descendants_cpu(pid: int) -> float:
    """CPU seconds of the children of ``pid`` (a writer process, say), dead ones included."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


@dataclass
class Served:
    """A running server to compare: its name in the output, URL, process id, thread names."""

    name: str
    base: str
    pid: int
    names: Path | None = None  # written by --serve-traced: native thread id -> name


def thread_stats(pid: int) -> dict[int, tuple[float, int]]:
    """Each thread of ``pid``: (CPU seconds on it, voluntary context switches: its wake-ups)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            on_cpu_ns = int((task / "schedstat").read_text().split()[0])
            status = (task / "status").read_text()
        except (OSError, ValueError, IndexError):
            continue  # the thread ended in between
        found = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.MULTILINE)
        out[int(task.name)] = (on_cpu_ns / 1e9, int(found.group(1)) if found else 0)
    return out


def by_thread_name(
    served: Served, before: dict[int, tuple[float, int]], after: dict[int, tuple[float, int]]
) -> dict[str, tuple[float, int]]:
    """The CPU seconds and wake-ups between two ``thread_stats``, summed per thread name."""
    names: dict[str, str] = {}
    if served.names is not None and served.names.exists():
        names = json.loads(served.names.read_text())
    totals: dict[str, tuple[float, int]] = {}
    for tid, (cpu, switches) in after.items():
        cpu0, switches0 = before.get(tid, (0.0, 0))
        name = "main" if tid == served.pid else names.get(str(tid), "other")
        # Pool threads ("Thread-7 (worker)", "AnyIO worker thread") share one line.
        name = re.sub(r"[-_ ]\d+$", "", re.sub(r"\s*\(.*\)$", "", name))
        old_cpu, old_switches = totals.get(name, (0.0, 0))
        totals[name] = (old_cpu + cpu - cpu0, old_switches + switches - switches0)
    return totals


def alternate(a: Served, b: Served, args: argparse.Namespace, script: Path | None) -> None:
    """Drive the two servers in turn, ``--pairs`` times, and compare like with like.

    One run after the other on a shared machine moves by more than the effect sought
    (other load comes and goes), so the runs alternate and the median of the per-pair
    ratios is reported, beside the CPU each server spent per request: main thread
    (what bounds one worker's throughput), its other threads and its child processes,
    and, for a server started with --serve-traced, each named thread's CPU per request
    and wake-ups per second.
    """
    ratios: list[float] = []
    per_request: dict[str, list[tuple[float, float, float]]] = {a.name: [], b.name: []}
    threads: dict[str, dict[str, list[tuple[float, float]]]] = {a.name: {}, b.name: {}}
    latency: dict[str, list[float]] = {a.name: [], b.name: []}
    for pair in range(args.pairs):
        rates = {}
        for served in (a, b) if pair % 2 == 0 else (b, a):
            drive_warm(served.base, args, script)
            before, before_children = cpu_times(served.pid), descendants_cpu(served.pid)
            stats_before = thread_stats(served.pid)
            result = measured(served.base, args, script)
            after, after_children = cpu_times(served.pid), descendants_cpu(served.pid)
            stats_after = thread_stats(served.pid)
            n = max(1, result.requests)
            per_request[served.name].append(
                (
                    (after.main - before.main) / n * 1e6,
                    (after.others - before.others) / n * 1e6,
                    (after_children - before_children) / n * 1e6,
                )
            )
            if served.names is not None:
                named = by_thread_name(served, stats_before, stats_after)
                for name, (cpu, wakeups) in named.items():
                    threads[served.name].setdefault(name, []).append(
                        (cpu / n * 1e6, wakeups / result.seconds)
                    )
            rates[served.name] = result.rps
            latency[served.name].append(result.p99_ms)
            show(f"  pair {pair + 1}: {served.name}", result)
        ratios.append(rates[a.name] / rates[b.name])
    for name in (a.name, b.name):
        main_us = statistics.median(x[0] for x in per_request[name])
        other_us = statistics.median(x[1] for x in per_request[name])
        child_us = statistics.median(x[2] for x in per_request[name])
        print(
            f"{'CPU per request, ' + name:<34} main thread {main_us:6.1f} us,"
            f" other threads {other_us:5.1f} us, child processes {child_us:5.1f} us;"
            f" p99 median {statistics.median(latency[name]):.2f} ms"
        )
        for thread, samples in sorted(threads[name].items()):
            if len(samples) == args.pairs and thread != "main":
                print(
                    f"{'  thread ' + thread:<34} {statistics.median(x[0] for x in samples):6.1f}"
                    f" us CPU per request, {statistics.median(x[1] for x in samples):7.1f}"
                    " wake-ups/s"
                )
    spread = f"{min(ratios):.3f}-{max(ratios):.3f}"
    print(
        f"{a.name + ' / ' + b.name:<34} {statistics.median(ratios):9.3f} x throughput"
        f" (median of {len(ratios)} alternating pairs; range {spread})"
    )


def decision_log_ab(
    on: tuple[str, int], off: tuple[str, int], args: argparse.Namespace, script: Path | None
) -> None:
    """The decision log on against off (target: a change under 5%)."""
    alternate(Served("decision log on", *on), Served("decision log off", *off), args, script)
    print("(target for decision log on / off: change under 5%)")


def serve_traced(names: Path, arguments: list[str]) -> None:
    """In a child process: ``risk-engine serve``, writing its threads' names to ``names``."""

    def record() -> None:
        while True:
            table = {str(t.native_id): t.name for t in threading.enumerate()}
            aside = names.with_suffix(".tmp")
            aside.write_text(json.dumps(table))
            aside.replace(names)
            time.sleep(0.5)

    threading.Thread(target=record, name="bench-thread-names", daemon=True).start()
    from risk_engine.cli import main

    sys.argv = ["risk-engine", *arguments]
    main()


def audit_ab(
    workdir: Path,
    env: dict[str, str],
    serve_args: Callable[[int, int, str], list[str]],
    args: argparse.Namespace,
    script: Path | None,
) -> None:
    """The audit writer thread (the default) against synchronous appends, SQLite, 1 worker."""
    print(f"audit writer thread and synchronous appends, {args.pairs} alternating pairs:")
    with contextlib.ExitStack() as stack:
        servers = []
        for name, extra in (
            ("audit writer thread", {}),
            ("audit synchronous", {"RISK_ENGINE_AUDIT_QUEUE_RECORDS": "0"}),
        ):
            tag = "sync" if extra else "thread"
            port = free_port()
            sqlite = f"sqlite:///{workdir / f'profiles-audit-{tag}.db'}"
            names = workdir / f"threads-{tag}.json"
            command = [
                sys.executable,
                __file__,
                "--serve-traced",
                str(names),
                *serve_args(port, 1, sqlite),
            ]
            var = {"RISK_ENGINE_VAR_DIR": str(workdir / f"var-audit-{tag}")}
            log_file = workdir / f"audit-{tag}.log"
            base, pid = stack.enter_context(
                server_process(command, port, {**env, **var, **extra}, log_file)
            )
            servers.append(Served(name, base, pid, names))
        alternate(servers[0], servers[1], args, script)


# -- Redis --------------------------------------------------------------------------------


def empty_redis_db(url: str) -> bool:
    """Whether the database answers and holds nothing (so the run may clean it after)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        return int(client.dbsize()) == 0
    except redis.RedisError:
        return False
    finally:
        client.close()


def clear_redis_db(url: str) -> None:
    """Delete what the run wrote (the database was empty before it)."""
    client = redis.Redis.from_url(url, socket_timeout=10.0)
    try:
        keys = list(client.scan_iter(match="risk-engine:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()


# -- main ---------------------------------------------------------------------------------


def print_versions(client: str) -> None:
    print(f"python {platform.python_version()} on {platform.platform()}")
    print(python_speed())
    print(core_mode())
    names = ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic", "httpx")
    print(", ".join(f"{name} {version(name)}" for name in names))
    if client == "wrk":
        banner = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
        print((banner.stdout or banner.stderr).splitlines()[0])
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"{os.cpu_count()} CPUs; load average {load}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--users", type=int, default=2000, help="distinct users in the load")
    parser.add_argument("--client", choices=("auto", "wrk", "httpx"), default="auto")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--redis-workers", default="2", help="worker counts, e.g. 1,2")
    parser.add_argument("--gc-compare", action="store_true", help="also without gc.freeze()")
    parser.add_argument(
        "--decision-log-compare",
        action="store_true",
        help="also with the decision log off (RISK_ENGINE_DECISION_LOG=off), same settings",
    )
    parser.add_argument(
        "--decision-log-only",
        action="store_true",
        help="only the decision log on/off comparison (implies --decision-log-compare, no Redis)",
    )
    parser.add_argument(
        "--audit-compare",
        action="store_true",
        help="only the audit writer thread against synchronous appends"
        " (RISK_ENGINE_AUDIT_QUEUE_RECORDS=0), SQLite, 1 worker, with CPU per thread",
    )
    parser.add_argument(
        "--pairs", type=int, default=6, help="alternating pairs for the --*-compare options"
    )
    parser.add_argument("--model", type=Path, help="model artifact (default: bundled)")
    parser.add_argument("--access-log", action="store_true", help="uvicorn access log on")
    parser.add_argument("--serve-noop", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--noop-factory", default="noop_app", help=argparse.SUPPRESS)
    parser.add_argument("--serve-unfrozen", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--serve-traced", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_noop is not None:
        serve_noop(args.serve_noop, args.noop_factory, args.access_log)
        return 0
    if args.serve_unfrozen is not None:
        serve_real_unfrozen(args.serve_unfrozen)
        return 0
    if args.serve_traced is not None:
        serve_traced(Path(args.serve_traced[0]), args.serve_traced[1:])
        return 0
    if not 0 < args.duration <= 600 or not 0 < args.connections <= 1024:
        parser.error("--duration must be in (0, 600] s and --connections in (0, 1024]")

    if args.decision_log_only:
        args.decision_log_compare = args.no_redis = True
    if args.audit_compare:
        args.no_redis = True
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "httpx"
    print_versions(client)
    print(
        f"load: {client}, {args.connections} connections, {args.duration:.0f} s after a"
        f" {WARMUP_S:.0f} s warm-up, {args.users} users, from {LOOPBACK}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        workdir = Path(tmp)
        script = None
        if client == "wrk":
            script = workdir / "decisions.lua"
            script.write_text(WRK_SCRIPT % {"ua": USER_AGENT, "users": args.users})
        env = {"RISK_ENGINE_VAR_DIR": str(workdir / "var")}
        if args.model is not None:
            env["RISK_ENGINE_MODEL_PATH"] = str(args.model)

        def serve_args(port: int, workers: int, store: str) -> list[str]:
            return [
                "serve",
                "--host",
                LOOPBACK,
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--store",
                store,
                "--no-auth",
                *("--access-log" if args.access_log else "--no-access-log",),
            ]

        if args.audit_compare:
            audit_ab(workdir, env, serve_args, args, script)
        elif not args.decision_log_only:
            log_flag = ["--access-log"] if args.access_log else []
            noops = {}
            for factory, name in (
                ("noop_app", "no-op FastAPI app"),
                ("bare_app", "no-op bare ASGI"),
            ):
                port = free_port()
                command = [
                    sys.executable,
                    __file__,
                    "--serve-noop",
                    str(port),
                    "--noop-factory",
                    factory,
                    *log_flag,
                ]
                with server(command, port, {}, workdir / f"{factory}.log") as base:
                    noops[factory] = drive(base, args, script)
                show(f"{name}, 1 worker", noops[factory])
            noop = noops["noop_app"]

            port = free_port()
            sqlite = f"sqlite:///{workdir / 'profiles.db'}"
            command = [*risk_engine_command(), *serve_args(port, 1, sqlite)]
            with server(command, port, env, workdir / "sqlite.log") as base:
                real = drive(base, args, script)
            show("risk-engine, SQLite, 1 worker", real)
            print(
                f"{'ratio risk-engine / no-op FastAPI':<34}"
                f" {real.rps / noop.rps:9.2f} x throughput,"
                f" p50 x{real.p50_ms / noop.p50_ms:.1f}, p99 x{real.p99_ms / noop.p99_ms:.1f}"
                "   (targets: >= 0.60 x, p99 <= x3)"
            )
            bare = noops["bare_app"]
            print(
                f"{'ratio risk-engine / bare ASGI':<34} {real.rps / bare.rps:9.2f} x throughput,"
                f" p50 x{real.p50_ms / bare.p50_ms:.1f}, p99 x{real.p99_ms / bare.p99_ms:.1f}"
            )

        if args.decision_log_compare:
            print(f"decision log on and off, {args.pairs} alternating pairs (SQLite, 1 worker):")
            with contextlib.ExitStack() as stack:
                servers = []
                for name, extra in (("on", {}), ("off", {"RISK_ENGINE_DECISION_LOG": "off"})):
                    port = free_port()
                    sqlite = f"sqlite:///{workdir / f'profiles-log-{name}.db'}"
                    command = [*risk_engine_command(), *serve_args(port, 1, sqlite)]
                    var = {"RISK_ENGINE_VAR_DIR": str(workdir / f"var-log-{name}")}
                    log_file = workdir / f"log-{name}.log"
                    servers.append(
                        stack.enter_context(
                            server_process(command, port, {**env, **var, **extra}, log_file)
                        )
                    )
                decision_log_ab(servers[0], servers[1], args, script)

        if args.gc_compare:
            port = free_port()
            sqlite = f"sqlite:///{workdir / 'profiles-unfrozen.db'}"
            command = [sys.executable, __file__, "--serve-unfrozen", *serve_args(port, 1, sqlite)]
            with server(command, port, env, workdir / "unfrozen.log") as base:
                unfrozen = drive(base, args, script)
            show("risk-engine, SQLite, no gc.freeze()", unfrozen)

        if not args.no_redis:
            redis_workers = [int(n) for n in args.redis_workers.split(",")]
            if not empty_redis_db(args.redis_url):
                print(f"redis runs skipped: {args.redis_url} is unreachable or not empty")
                redis_workers = []
            for workers in redis_workers:
                port = free_port()
                command = [*risk_engine_command(), *serve_args(port, workers, args.redis_url)]
                try:
                    with server(command, port, env, workdir / "redis.log") as base:
                        redis_result = drive(base, args, script)
                finally:
                    # The database was empty before: everything in it is this run's.
                    clear_redis_db(args.redis_url)
                show(f"risk-engine, Redis, {workers} worker{'s' * (workers > 1)}", redis_result)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"load average at the end {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
