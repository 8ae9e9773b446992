"""Feature-pipeline cost per event and the profile size after 1,000 events.

Usage: .venv/bin/python benchmarks/bench_features.py [--events 1000]

Replays the busiest users of the committed sample (cycled to the requested
length for one user) through observe -> compute_features -> learn, the exact
functions the engine calls, timing each step per event.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
from reference import core_mode

from risk_engine.events import Event
from risk_engine.features.learn import learn
from risk_engine.features.observation import observe
from risk_engine.features.registry import compute_features
from risk_engine.geo import GeoLocator
from risk_engine.offline.logs import LogReport, read_events
from risk_engine.privacy import Hasher
from risk_engine.profiles.model import BurstCounts, Profile

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "events.jsonl"


def one_user_stream(events: list[Event], count: int) -> list[Event]:
    """Every sample event re-labelled as one user, shifted forward to make ``count`` events."""
    span = events[-1].timestamp - events[0].timestamp + timedelta(hours=1)
    out: list[Event] = []
    cycle = 0
    while len(out) < count:
        for event in events:
            if len(out) == count:
                break
            out.append(
                event.model_copy(
                    update={
                        "user_id": "bench-user",
                        "timestamp": event.timestamp + cycle * span,
                        "event_id": f"{event.event_id}-{cycle}",
                    }
                )
            )
        cycle += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    args = parser.parse_args()
    sample = list(read_events(SAMPLE, LogReport()))
    busiest = max({e.user_id for e in sample}, key=lambda u: sum(e.user_id == u for e in sample))
    mine = [e for e in sample if e.user_id == busiest]
    # Mix in other users' events too, so that the profile meets many places and devices.
    stream = one_user_stream(sorted(mine + sample[:400], key=lambda e: e.epoch), args.events)
    geo = GeoLocator()
    hasher = Hasher("bench")
    profile = Profile(user_key="bench")
    bursts = BurstCounts()
    t_geo: list[float] = []
    t_obs: list[float] = []
    t_feat: list[float] = []
    t_learn: list[float] = []
    for event in stream:
        t0 = time.perf_counter()
        location = geo.lookup(event.ip)
        t1 = time.perf_counter()
        obs = observe(event, location, hasher, "bench")
        t2 = time.perf_counter()
        compute_features(profile, bursts, obs)
        t3 = time.perf_counter()
        learn(profile, obs, trusted=True)
        t4 = time.perf_counter()
        t_geo.append(t1 - t0)
        t_obs.append(t2 - t1)
        t_feat.append(t3 - t2)
        t_learn.append(t4 - t3)
    total = [a + b + c + d for a, b, c, d in zip(t_geo, t_obs, t_feat, t_learn, strict=True)]

    def fmt(values: list[float]) -> str:
        us = np.asarray(values) * 1e6
        return f"median {statistics.median(us):7.1f} us   p99 {np.quantile(us, 0.99):7.1f} us"

    print(f"python {platform.python_version()}, numpy {np.__version__}")
    print(core_mode())
    print(f"events replayed for one user: {len(stream)}")
    print(f"geoip lookup (cached)      {fmt(t_geo)}")
    print(f"observe                    {fmt(t_obs)}")
    print(f"compute_features           {fmt(t_feat)}")
    print(f"learn                      {fmt(t_learn)}")
    print(f"pipeline total             {fmt(total)}")
    print(
        f"profile after {len(stream)} events: {len(profile.stored()):,} bytes stored"
        f" ({len(profile.dumps()):,} bytes of JSON) "
        f"({len(profile.devices)} devices, {len(profile.networks)} networks, "
        f"{len(profile.countries)} countries, {len(profile.places)} places)"
    )


if __name__ == "__main__":
    main()
