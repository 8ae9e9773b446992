"""Small helpers shared by the feature families."""

from __future__ import annotations

import math

from risk_engine.geo import haversine_km
from risk_engine.profiles.model import Profile

# Below this many trusted events a user has no usable history for "new X" flags.
MIN_HISTORY = 1
HOUR_S = 3600.0
DAY_S = 86400.0


def familiarity(counter: dict[str, list[float]], key: str, total: float | None = None) -> float:
    """Witten-Bell smoothed probability of ``key`` under the user's own history.

    Freeman et al. (NDSS 2016) smooth per-user likelihoods so that a user who has
    been seen in many places is less surprised by one more; Witten-Bell does that
    by keeping ``distinct / (n + distinct)`` of the mass for values never seen.

    >>> familiarity({"NO": [9.0, 0.0], "SE": [1.0, 0.0]}, "NO")
    0.75
    >>> familiarity({}, "NO")
    0.0
    """
    entry = counter.get(key)
    if entry is None:
        return 0.0
    return entry[0] / ((mass(counter) if total is None else total) + len(counter))


def novelty(counter: dict[str, list[float]], total: float | None = None) -> float:
    """Witten-Bell mass left for unseen values: how often this user shows something new.

    A commuter on a mobile carrier or a frequent traveller shows new networks all
    the time; for them a new one is no surprise.

    >>> novelty({"a": [3.0, 0.0], "b": [1.0, 0.0]})
    0.3333333333333333
    >>> novelty({})
    1.0
    """
    if not counter:
        return 1.0
    return len(counter) / ((mass(counter) if total is None else total) + len(counter))


def mass(counter: dict[str, list[float]]) -> float:
    """The total count of a [count, last_ts] map (``total`` above, when a caller has it)."""
    return sum([value[0] for value in counter.values()])


def is_new(profile: Profile, counter: dict[str, list[float]], key: str) -> float:
    """1.0 when the user has history and has never shown ``key``; 0.0 on cold start."""
    if profile.n_events < MIN_HISTORY or not key:
        return 0.0
    return 0.0 if key in counter else 1.0


def effective_distance_km(
    lat1: float, lon1: float, acc1: float, lat2: float, lon2: float, acc2: float
) -> float:
    """Distance with both accuracy radii subtracted, so coarse fixes never fake travel."""
    return max(0.0, haversine_km(lat1, lon1, lat2, lon2) - acc1 - acc2)


def speed_kmh(distance_km: float, seconds: float) -> float:
    """Travel speed, counting any gap under a minute as one minute.

    >>> speed_kmh(100.0, 3600.0)
    100.0
    """
    if distance_km <= 0.0:
        return 0.0
    return distance_km / (max(seconds, 60.0) / HOUR_S)


def log1p(value: float) -> float:
    return math.log1p(max(0.0, value))
