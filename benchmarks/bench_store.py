"""Latency of one profile read-modify-write (``store.update``) on each backend.

The engine calls ``update`` once per scored event, so its cost bounds throughput.
Each iteration bumps a counter on a realistic profile (every capped collection
well filled, a few KB of JSON) and times the whole call.

    .venv/bin/python benchmarks/bench_store.py [--iterations 5000] [--redis-url URL] [--at-caps]
    .venv/bin/python benchmarks/bench_store.py --from-log EVENTS.jsonl ...

``--from-log`` prints instead the stored size of every profile an event log builds
(replayed through the engine in time order): the median and tail a store pays per user.
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import msgpack
import orjson
import redis
from reference import core_mode, python_speed

from risk_engine.assembly import build_engine
from risk_engine.errors import ProfileStoreError
from risk_engine.geo import GeoLocator
from risk_engine.offline.replay import replay
from risk_engine.profiles import (
    DeviceRecord,
    MemoryStore,
    Place,
    Profile,
    ProfileStore,
    RedisStore,
    SessionRecord,
    SQLiteStore,
)
from risk_engine.profiles.model import (
    MAX_ACTIONS,
    MAX_AMOUNTS,
    MAX_CITIES,
    MAX_COUNTRIES,
    MAX_DEVICES,
    MAX_FAILURES,
    MAX_FAMILIES,
    MAX_IPS,
    MAX_NETWORKS,
    MAX_PAYEES,
    MAX_PENDING,
    MAX_PLACES,
    MAX_RECENT,
    MAX_SESSIONS,
    MAX_STEPS,
    MAX_WINDOWS,
    PROFILE_VERSION,
    Step,
    bump,
    push_bounded,
)

USER = "bench-user"
WARMUP = 200


def realistic(profile: Profile, *, at_caps: bool = False) -> None:
    """Fill ``profile`` like a user with months of varied history (or every cap reached).

    Keys are what the engine keeps: keyed hashes in hex (random, so incompressible),
    amounts as their log1p, times in whole seconds as events carry them.
    """
    rng = random.Random(7)

    def n(typical: int, cap: int) -> int:
        return cap if at_caps else typical

    def hashed(prefix: str = "") -> str:
        return prefix + rng.randbytes(8).hex()

    t0 = 1_700_000_000.0
    profile.created_ts, profile.last_ts, profile.last_seen_ts = t0, t0 + 9e6, t0 + 9e6
    profile.n_events, profile.n_seen = 4_210, 3_977
    for i in range(n(3, MAX_DEVICES)):
        device = DeviceRecord(
            key=hashed("id:" if i % 2 == 0 else "fp:"),
            has_id=i % 2 == 0,
            ua_family="Chrome Mobile" if i % 2 else "Firefox",
            ua_major=str(120 + i),
            os_family="Android" if i % 2 else "Windows",
            os_major=str(10 + i),
            device_class="mobile" if i % 2 else "desktop",
            platform="arm64" if i % 2 else "x86_64",
            timezone="Europe/Paris",
            language="fr-FR",
            screen="1080x2400" if i % 2 else "1920x1080",
            first_ts=t0 + i * 100_003,
            last_ts=t0 + i * 1_000_033,
            count=50 + i,
            trusted=i < 2,
            trusted_until=t0 + 3e7 if i < 2 else None,
        )
        profile.devices[device.key] = device
    for i in range(n(3, MAX_PLACES)):
        place = Place(t0 + i * 3_607.0, 48.8534 + i / 100, 2.3488, 5.0, "FR", "Paris")
        push_bounded(profile.places, place, MAX_PLACES)
    # Active in working hours only, unless every hour of the week has been seen; a
    # histogram that has been halved (as a full one is) holds halves.
    profile.hours = [
        float((h * 7) % 13) / (2.0 if at_caps else 1.0) if at_caps or 8 <= h % 24 <= 19 else 0.0
        for h in range(len(profile.hours))
    ]
    for i in range(n(3, MAX_COUNTRIES)):
        bump(profile.countries, f"C{i}", t0 + i * 7_919, MAX_COUNTRIES)
    for i in range(n(4, MAX_CITIES)):
        bump(profile.cities, f"C{i}/City {i}", t0 + i * 7_919, MAX_CITIES)
    for i in range(n(8, MAX_NETWORKS)):
        bump(profile.networks, f"203.0.{i}.0/24", t0 + i * 7_919, MAX_NETWORKS)
    for i in range(n(2, MAX_FAMILIES)):
        bump(profile.families, f"203.{i}.0.0/16@FR/Paris", t0 + i * 7_919, MAX_FAMILIES)
    for i in range(n(10, MAX_IPS)):
        bump(profile.ips, hashed(), t0 + i * 7_919, MAX_IPS)
    for i in range(n(5, MAX_ACTIONS)):
        bump(profile.actions, f"action-{i}", t0 + i * 7_919, MAX_ACTIONS)
    for i in range(n(2, MAX_PAYEES)):
        bump(profile.payees, hashed(), t0 + i * 7_919, MAX_PAYEES)
    for _ in range(n(20, MAX_AMOUNTS)):
        push_bounded(profile.amounts, math.log1p(rng.uniform(5.0, 900.0)), MAX_AMOUNTS)
    for i in range(n(16, MAX_RECENT)):
        push_bounded(profile.recent, t0 + i * 61.0, MAX_RECENT)
    for i in range(n(2, MAX_FAILURES)):
        push_bounded(profile.failures, t0 + i * 601.0, MAX_FAILURES)
    # Sessions, steps and burst windows name what the profile's maps hold.
    devices, ips, payees = list(profile.devices), list(profile.ips), list(profile.payees)
    for i in range(n(3, MAX_SESSIONS)):
        profile.sessions[hashed("s:")] = SessionRecord(
            t0 + i * 977,
            ips[i % len(ips)],
            f"203.0.{i}.0/24",
            devices[i % len(devices)],
            "FR",
            48.8534,
            2.3488,
            5.0,
            "FR/Paris",
            start_ts=t0 + i * 977 - 300,
        )
    sessions = list(profile.sessions)
    for i in range(n(1, MAX_STEPS)):
        kind = "payee" if i % 2 else "credential"
        action = "add_payee" if i % 2 else "change_password"
        payee = payees[i % len(payees)] if i % 2 else ""
        step = Step(t0 + i * 86_413, kind, action, sessions[i % len(sessions)], payee)
        push_bounded(profile.steps, step, MAX_STEPS)
    for i in range(n(1, MAX_PENDING)):
        profile.pending[f"evt-{i}"] = {"device_key": devices[0], "country": "FR", "amount": 42.0}
    for i in range(n(2, MAX_WINDOWS)):
        key = f"ip:{ips[i % len(ips)]}" if i % 2 else f"net:203.0.{i}.0/24"
        profile.note_window(key, t0 + i * 3_001)


def touch(profile: Profile) -> int:
    profile.n_seen += 1
    return profile.n_seen


def measure(store: ProfileStore, iterations: int, *, at_caps: bool) -> list[float]:
    """Seconds per ``update`` over ``iterations`` calls, after a warm-up."""
    store.update(USER, lambda profile: realistic(profile, at_caps=at_caps))
    for _ in range(WARMUP):
        store.update(USER, touch)
    samples = []
    clock = time.perf_counter
    for _ in range(iterations):
        start = clock()
        store.update(USER, touch)
        samples.append(clock() - start)
    return samples


def report(name: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * len(ordered)))]
    print(
        f"{name:<8} median {statistics.median(ordered) * 1e6:8.1f} µs"
        f"   p99 {p99 * 1e6:8.1f} µs   mean {statistics.fmean(ordered) * 1e6:8.1f} µs"
        f"   ({len(ordered)} updates)"
    )


def redis_server_version(url: str) -> str:
    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        return str(client.info("server").get("redis_version", "?"))
    except redis.RedisError as exc:
        return f"unreachable ({exc})"
    finally:
        client.close()


def deflated_json(profile: Profile) -> bytes:
    deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
    return deflate.compress(profile.dumps()) + deflate.flush()


Candidate = tuple[str, int, Callable[[], object], Callable[[], object] | None]


def candidates(sample: Profile) -> list[Candidate]:
    """Each form: its name, its size, how to write it and how to read it back."""
    json, deflated, packed = sample.dumps(), deflated_json(sample), sample.pack()
    # The dict made once: what msgpack itself costs, not dataclasses.asdict.
    fields = orjson.loads(json)
    return [
        ("JSON (version 1)", len(json), sample.dumps, lambda: Profile.loads(json)),
        (
            "JSON, deflated",
            len(deflated),
            lambda: deflated_json(sample),
            lambda: Profile.loads(zlib.decompress(deflated, -15)),
        ),
        (
            "msgpack, named fields",
            len(msgpack.packb(fields)),
            lambda: msgpack.packb(fields),
            None,
        ),
        ("binary (version 2)", len(packed), sample.pack, lambda: Profile.loads(packed)),
    ]


def formats(runs: int) -> None:
    """Size and (de)serialisation time of the candidate forms, typical and at the caps."""
    for at_caps in (False, True):
        sample = Profile(USER)
        realistic(sample, at_caps=at_caps)
        tag = "at caps" if at_caps else "typical"
        for name, size, encode, decode in candidates(sample):
            line = f"format {tag} {name:22s} {size:6,d} bytes"
            line += f"   encode {median_us(encode, runs):6.1f} µs"
            if decode is not None:
                line += f"   decode {median_us(decode, runs):6.1f} µs"
            print(line)
    print()


def median_us(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def checksum(sample: Profile, runs: int) -> None:
    """What the stored form's CRC32 adds to one write and one read of the profile."""
    payload = sample.pack()
    stored = sample.stored()
    for name, fn in (
        ("write: pack", sample.pack),
        ("write: pack + crc32 (stored)", sample.stored),
        ("crc32 alone", lambda: zlib.crc32(payload)),
        ("read: loads, unchecked", lambda: Profile.loads(payload)),
        ("read: loads, checked", lambda: Profile.loads(stored)),
    ):
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        times.sort()
        print(f"checksum {name:32s} median {times[len(times) // 2] * 1e6:7.2f} µs")
    print()


def log_sizes(paths: list[Path]) -> int:
    """The stored size of every profile the logs build: what a store keeps per user."""
    store = MemoryStore()
    engine = build_engine(store=store, geo=GeoLocator())
    table = replay(paths, {}, engine=engine)
    profiles = [store.get(engine.user_key(user)) for user in sorted(set(table.user_ids))]
    stored = sorted(len(p.stored()) for p in profiles if p is not None)
    as_json = sorted(len(p.dumps()) for p in profiles if p is not None)
    if not stored:
        print("no profiles: the logs hold no valid event")
        return 1

    def quantiles(sizes: list[int]) -> str:
        at = [sizes[min(len(sizes) - 1, int(q * len(sizes)))] for q in (0.5, 0.9, 0.99)]
        return f"median {at[0]:,d}  p90 {at[1]:,d}  p99 {at[2]:,d}  max {sizes[-1]:,d} bytes"

    print(f"{len(table.user_ids):,d} events, {len(stored):,d} profiles")
    print(f"stored (binary version {PROFILE_VERSION}): {quantiles(stored)}")
    print(f"JSON (dumps):              {quantiles(as_json)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--at-caps", action="store_true", help="every collection full: the largest profile"
    )
    parser.add_argument(
        "--from-log",
        type=Path,
        nargs="+",
        metavar="EVENTS",
        help="only the sizes of the stored profiles an event log builds (replayed, no model)",
    )
    args = parser.parse_args()
    runs, at_caps = args.iterations, args.at_caps
    print(core_mode())
    if args.from_log:
        return log_sizes(args.from_log)
    print(python_speed())

    sample = Profile(USER)
    realistic(sample, at_caps=at_caps)
    print(f"python {platform.python_version()} on {platform.platform()}")
    print(
        f"sqlite {sqlite3.sqlite_version}, redis-py {version('redis')},"
        f" redis server {redis_server_version(args.redis_url)}, orjson {version('orjson')}"
    )
    print(
        f"profile: {len(sample.stored())} bytes stored ({len(sample.dumps())} bytes of JSON);"
        f" {args.iterations} updates per store\n"
    )

    formats(runs)
    checksum(sample, runs)
    report("memory", measure(MemoryStore(), runs, at_caps=at_caps))

    with tempfile.TemporaryDirectory() as tmp:
        sqlite_store = SQLiteStore(Path(tmp) / "bench.db")
        try:
            report("sqlite", measure(sqlite_store, runs, at_caps=at_caps))
        finally:
            sqlite_store.close()

    redis_store = RedisStore(args.redis_url, prefix=f"risk-engine-bench-{uuid.uuid4().hex}")
    try:
        redis_store.ping()
    except ProfileStoreError as exc:
        print(f"redis    skipped: {exc}")
    else:
        try:
            report("redis", measure(redis_store, runs, at_caps=at_caps))
        finally:
            redis_store.delete(USER)
    finally:
        redis_store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
