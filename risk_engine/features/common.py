"""What the feature families share: the lesson they learn, the helpers they score
and word their reasons with."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from risk_engine.decision import Reason
from risk_engine.profiles.model import Profile

# The mean Earth radius (IUGG), in km.
EARTH_RADIUS_KM = 6371.0088
# Below this many trusted events a user has no usable history for "new X" flags.
MIN_HISTORY = 1
HOUR_S = 3600.0
DAY_S = 86400.0
# How long a device stays trusted after its last trusted use.
DEFAULT_DEVICE_TRUST_S = 90 * DAY_S

# A reason and the weight that orders it among the event's reasons (higher first).
Weighted = tuple[float, Reason]


@dataclass(frozen=True, slots=True)
class Lesson:
    """What one event teaches the profile: its decision, or its step-up's outcome.

    ``seen``: the event happens now, so its activity counts (recent events, failed
    logins, steps) whatever its decision; False when a held event's outcome
    arrives (it was counted when it was scored). ``trusted``: it teaches where the
    user is and what the user uses. ``refused``: denied, or its step-up failed, so
    its device is kept as an untrusted one. ``failed_at``: a failed step-up counts
    as a failure at that time.
    """

    seen: bool
    trusted: bool
    refused: bool
    device_trust_s: float = DEFAULT_DEVICE_TRUST_S
    failed_at: float | None = None


class FeatureView:
    """One event's feature vector, read by name: a family's reasons may read any feature."""

    def __init__(self, values: list[float], index: Mapping[str, int]) -> None:
        self.values = values
        self.index = index

    def __getitem__(self, name: str) -> float:
        return self.values[self.index[name]]


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


# Seen this many times (trusted events, decayed), a place is one of the user's own.
REGULAR_COUNT = 10.0


def regular(counter: dict[str, list[float]], key: str, top: float | None = None) -> float:
    """How regular ``key`` is among the user's own: its count against the most seen value's.

    Witten-Bell's probability (``familiarity``) splits a user's mass over their
    values, so a user who lives in two places, or rotates a VPN over three exit
    countries, looks a third as familiar everywhere as a user who stays home, and
    is challenged for it. Measured against the user's most seen value instead (the
    same ``distinct`` kept back for the unseen), each of those places is as
    regular as home, while a value seen once among many stays rare. Up to
    ``REGULAR_COUNT`` it is ``familiarity`` with the top count for the total
    (``top``, when a caller has it).

    >>> regular({"NO": [9.0, 0.0], "SE": [1.0, 0.0]}, "NO")
    0.8181818181818182
    >>> regular({"NO": [9.0, 0.0], "SE": [9.0, 0.0], "DK": [9.0, 0.0]}, "SE")
    0.75
    >>> regular({}, "NO")
    0.0

    A value seen ``REGULAR_COUNT`` times or more is the user's own however much more
    the top one was seen (a VPN exit abroad forty times a year beside home every
    day); below that it is measured against at most ``REGULAR_COUNT``, so the value
    is continuous and monotone in the count, and a value seen once stays rare.

    >>> regular({"NO": [350.0, 0.0], "SE": [40.0, 0.0]}, "SE")
    0.9523809523809523
    """
    entry = counter.get(key)
    if entry is None:
        return 0.0
    count = entry[0]
    scale = top_count(counter) if top is None else top
    if scale > REGULAR_COUNT:
        scale = max(count, REGULAR_COUNT)
    return count / (scale + len(counter))


def top_count(counter: dict[str, list[float]]) -> float:
    """The count of the most seen value of a [count, last_ts] map (0.0 when empty)."""
    top = 0.0
    for value in counter.values():
        top = max(top, value[0])
    return top


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


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points given in degrees.

    >>> round(haversine_km(59.91, 10.75, 51.51, -0.13))
    1153
    >>> haversine_km(10.0, 20.0, 10.0, 20.0)
    0.0
    """
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2.0 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


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


def km_text(value: float) -> str:
    """A distance as reasons word it.

    >>> km_text(8412.4)
    '8,412 km'
    """
    return f"{value:,.0f} km"


def duration_text(seconds: float) -> str:
    """A duration as reasons word it: minutes, hours, then days.

    >>> duration_text(35 * 60.0), duration_text(5 * 3600.0), duration_text(9 * 86400.0)
    ('35 min', '5.0 h', '9 days')
    """
    minutes = seconds / 60.0
    if minutes < 90:
        return f"{max(1, round(minutes))} min"
    hours = minutes / 60.0
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.0f} days"
