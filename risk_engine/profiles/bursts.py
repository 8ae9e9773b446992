"""Sliding windows of recent events per address and network, for burst signals.

Shared by the in-memory and SQLite stores; Redis keeps the same shape in sorted sets.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

from risk_engine.profiles.model import BurstCounts
from risk_engine.profiles.store import BURST_MAX_ENTRIES, BURST_WINDOW_S

# Up to this many entries a window is counted by walking it (0.5-1.9 us); above it,
# the counts are kept up to date as entries come and go. A full window (512 entries:
# an office or a carrier NAT, one event every 7 s) took 28 us to walk, and a decision
# counts two windows (benchmarks/bench_engine.py, "busy network").
TRACK_FROM = 32


class BurstWindow:
    """Recent (ts, user, failed) entries for one key, in arrival order, bounded.

    ``counts(now)`` is ``walk(entries, now)`` by definition: from the newest entry
    back to the first at or before the window's start, skipping entries after
    ``now``. A long window
    keeps that answer incrementally instead: while its entries arrive in time
    order and the queries' ``now`` neither precedes the newest entry nor moves
    back, the counted entries are exactly its newest ones after the window's
    start, so a query only uncounts those that fell out. Anything else (an entry
    out of order, a query into the past) walks, and the next in-order query
    recounts once. ``tests/unit/test_bursts.py`` holds both to the same answers.
    """

    __slots__ = ("_failures", "_inversions", "_live", "_start", "_users", "entries")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, str, bool]] = deque(maxlen=BURST_MAX_ENTRIES)
        # user -> counted entries of that user; None while the window is short.
        self._users: dict[str, int] | None = None
        self._failures = 0
        # The newest ``_live`` entries are the counted ones; -1: recount first.
        self._live = -1
        self._start = -math.inf
        # Adjacent pairs whose second entry is older than the first.
        self._inversions = 0

    def add(self, ts: float, user_key: str, failed: bool) -> None:
        entries = self.entries
        if entries and ts < entries[-1][0]:
            self._inversions += 1
            self._live = -1
        if len(entries) == BURST_MAX_ENTRIES:
            self._drop_oldest()
        entries.append((ts, user_key, failed))
        users = self._users
        if users is None:
            if len(entries) > TRACK_FROM:
                self._users = {}
                self._live = -1
        elif self._live >= 0:
            users[user_key] = users.get(user_key, 0) + 1
            self._failures += failed
            self._live += 1

    def without(self, user_key: str) -> BurstWindow:
        """A copy of this window without ``user_key``'s entries."""
        kept = BurstWindow()
        for ts, user, failed in self.entries:
            if user != user_key:
                kept.add(ts, user, failed)
        return kept

    def drop_before(self, start: float) -> None:
        """Forget entries at or before ``start`` from the oldest on, keeping the newest."""
        entries = self.entries
        while len(entries) > 1 and entries[0][0] <= start:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        entries = self.entries
        if len(entries) > 1 and entries[1][0] < entries[0][0]:
            self._inversions -= 1
        _, user, failed = entries.popleft()
        if self._live > len(entries):  # the dropped entry was a counted one
            self._uncount(user, failed)
            self._live -= 1

    def _uncount(self, user: str, failed: bool) -> None:
        users = self._users
        assert users is not None
        left = users[user] - 1
        if left:
            users[user] = left
        else:
            del users[user]
        self._failures -= failed

    def counts(self, now: float) -> tuple[int, int]:
        """Distinct users and failures in (now - window, now]."""
        start = now - BURST_WINDOW_S
        entries = self.entries
        users = self._users
        if users is None or self._inversions or (entries and entries[-1][0] > now):
            self._live = -1
            return walk(entries, now)
        if self._live < 0 or start < self._start:
            users.clear()
            self._failures = 0
            self._live = 0
            for ts, user, failed in reversed(entries):
                if ts <= start:
                    break
                users[user] = users.get(user, 0) + 1
                self._failures += failed
                self._live += 1
        else:
            size = len(entries)
            while self._live and entries[size - self._live][0] <= start:
                _, user, failed = entries[size - self._live]
                self._uncount(user, failed)
                self._live -= 1
        self._start = start
        return len(users), self._failures


def walk(entries: deque[tuple[float, str, bool]], now: float) -> tuple[int, int]:
    """Distinct users and failures in (now - window, now], by definition.

    The walk from the newest entry back to the first at or before the window's
    start, skipping entries after ``now``: what ``BurstWindow.counts`` answers.
    """
    start = now - BURST_WINDOW_S
    users: set[str] = set()
    failures = 0
    for ts, user, failed in reversed(entries):
        if ts <= start:
            break
        if ts > now:
            continue
        users.add(user)
        failures += failed
    return len(users), failures


class BurstTable:
    """Burst windows keyed by address key and network, pruned as time advances."""

    def __init__(self, max_keys: int = 200_000) -> None:
        self._windows: dict[str, BurstWindow] = {}
        self._max_keys = max_keys

    def counts(
        self, ip_key: str, network: str, now: float, crowd: tuple[int, int] = (0, 0)
    ) -> BurstCounts:
        """The windows' counts before ``now``, with the network's ``crowd`` counts."""
        ip_users, ip_failures = self._counts(f"ip:{ip_key}", now)
        net_users, net_failures = self._counts(f"net:{network}", now)
        return BurstCounts(ip_users, ip_failures, net_users, net_failures, *crowd)

    def _counts(self, key: str, now: float) -> tuple[int, int]:
        window = self._windows.get(key)
        return window.counts(now) if window else (0, 0)

    def record(self, ip_key: str, network: str, user_key: str, ts: float, failed: bool) -> None:
        for key in (f"ip:{ip_key}", f"net:{network}"):
            window = self._windows.get(key)
            if window is None:
                if len(self._windows) >= self._max_keys:
                    self._prune(ts)
                window = self._windows[key] = BurstWindow()
            window.add(ts, user_key, failed)

    def forget(self, keys: Iterable[str], user_key: str) -> None:
        """Remove ``user_key``'s entries from the windows ``keys`` (erasure)."""
        for key in keys:
            window = self._windows.get(key)
            if window is not None:
                self._windows[key] = window.without(user_key)

    def trim(self, now: float) -> None:
        """Forget entries at or before ``now`` minus the window, except each newest.

        For a table fed in time order (the offline replay): there an entry older than
        the window before the current event can never be counted again, and pruning
        looks at each window's newest entry only, so no count changes. Memory then
        stays flat in the number of events, where the table alone would keep up to
        ``BURST_MAX_ENTRIES`` entries for every key ever seen.
        """
        start = now - BURST_WINDOW_S
        for window in self._windows.values():
            window.drop_before(start)

    def _prune(self, now: float) -> None:
        """Drop windows whose newest entry is older than the window (bounded memory)."""
        start = now - BURST_WINDOW_S
        stale = [k for k, w in self._windows.items() if not w.entries or w.entries[-1][0] <= start]
        for key in stale:
            del self._windows[key]
        if len(self._windows) >= self._max_keys:
            # Still full of live keys: forget the oldest half rather than grow.
            ordered = sorted(self._windows, key=lambda k: self._windows[k].entries[-1][0])
            for key in ordered[: len(ordered) // 2]:
                del self._windows[key]
