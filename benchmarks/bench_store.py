"""Latency of one profile read-modify-write (``store.update``) on each backend.

The engine calls ``update`` once per scored event, so its cost bounds throughput.
Each iteration bumps a counter on a realistic profile (every capped collection
well filled, a few KB of JSON) and times the whole call.

    .venv/bin/python benchmarks/bench_store.py [--iterations 5000] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import platform
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

from risk_engine.errors import ProfileStoreError
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
    MAX_IPS,
    MAX_NETWORKS,
    MAX_PENDING,
    MAX_PLACES,
    MAX_RECENT,
    MAX_SESSIONS,
    bump,
    push_bounded,
)

USER = "bench-user"
WARMUP = 200


def realistic(profile: Profile, *, at_caps: bool = False) -> None:
    """Fill ``profile`` like a user with months of varied history (or every cap reached)."""

    def n(typical: int, cap: int) -> int:
        return cap if at_caps else typical

    t0 = 1_700_000_000.0
    profile.created_ts, profile.last_ts, profile.last_seen_ts = t0, t0 + 9e6, t0 + 9e6
    profile.n_events, profile.n_seen = 4_210, 3_977
    for i in range(n(3, MAX_DEVICES)):
        device = DeviceRecord(
            key=f"dev-{i:02d}-{uuid.UUID(int=i).hex[:12]}",
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
            first_ts=t0 + i * 1e5,
            last_ts=t0 + i * 1e6,
            count=50 + i,
            trusted=i < 2,
            trusted_until=t0 + 3e7 if i < 2 else None,
        )
        profile.devices[device.key] = device
    for i in range(n(3, MAX_PLACES)):
        place = Place(t0 + i * 3600.0, 48.85 + i / 100, 2.35, 5.0, "FR", "Paris")
        push_bounded(profile.places, place, MAX_PLACES)
    # Active in working hours only, unless every hour of the week has been seen.
    profile.hours = [
        float((h * 7) % 13) if at_caps or 8 <= h % 24 <= 19 else 0.0
        for h in range(len(profile.hours))
    ]
    for i in range(n(3, MAX_COUNTRIES)):
        bump(profile.countries, f"C{i}", t0 + i, MAX_COUNTRIES)
    for i in range(n(4, MAX_CITIES)):
        bump(profile.cities, f"C{i}/City {i}", t0 + i, MAX_CITIES)
    for i in range(n(8, MAX_NETWORKS)):
        bump(profile.networks, f"203.0.{i}.0/24", t0 + i, MAX_NETWORKS)
    for i in range(n(10, MAX_IPS)):
        bump(profile.ips, f"ipk-{i:04x}{i:08x}", t0 + i, MAX_IPS)
    for i in range(n(5, MAX_ACTIONS)):
        bump(profile.actions, f"action-{i}", t0 + i, MAX_ACTIONS)
    for i in range(n(20, MAX_AMOUNTS)):
        push_bounded(profile.amounts, 10.0 + i * 3.7, MAX_AMOUNTS)
    for i in range(n(16, MAX_RECENT)):
        push_bounded(profile.recent, t0 + i * 60.0, MAX_RECENT)
    for i in range(n(2, MAX_FAILURES)):
        push_bounded(profile.failures, t0 + i * 600.0, MAX_FAILURES)
    for i in range(n(3, MAX_SESSIONS)):
        profile.sessions[f"sess-{i}"] = SessionRecord(
            t0 + i, f"ipk-{i:04x}", f"203.0.{i}.0/24", f"dev-{i:02d}", "FR", 48.85, 2.35, 5.0
        )
    for i in range(n(1, MAX_PENDING)):
        profile.pending[f"evt-{i}"] = {"device_key": "dev-01", "country": "FR", "amount": 42.0}


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--at-caps", action="store_true", help="every collection full: the largest profile"
    )
    args = parser.parse_args()
    runs, at_caps = args.iterations, args.at_caps

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
