"""Sliding windows of recent events per address and network, for burst signals.

Shared by the in-memory and SQLite stores; Redis keeps the same shape in sorted sets.
"""

from __future__ import annotations

import math
from bisect import bisect_right
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
    ``now``. A long window keeps that answer incrementally instead, whatever the
    order in which entries arrive and queries ask. The entry where the walk stops
    (the cut) is the last of the entries older than every entry after them: those
    are kept as a stack in time order, so the cut is a bisection away. The entries
    that ``now`` passed since the last query are found in an index by time. A query
    then counts or uncounts only the entries that crossed the cut or ``now`` since
    the last one, and counts the entries added since: for a busy network whose
    events arrive in time order or a little out of it, a few per event, never the
    window. ``tests/unit/test_bursts.py`` holds both to the same answers.
    """

    __slots__ = (
        "_base",
        "_counted",
        "_cut",
        "_failures",
        "_head",
        "_high",
        "_minima",
        "_minima_ts",
        "_now",
        "_numbers",
        "_synced",
        "_times",
        "_users",
        "entries",
    )

    def __init__(self) -> None:
        self.entries: deque[tuple[float, str, bool]] = deque(maxlen=BURST_MAX_ENTRIES)
        # The arrival number of entries[0]: entry number n is entries[n - _base].
        self._base = 0
        # user -> counted entries of that user; None while the window is short.
        self._users: dict[str, int] | None = None
        self._failures = 0
        # The counts are those of the entries numbered in (_cut, _synced) whose time
        # is at or before _now; False: count afresh at the next query.
        self._counted = False
        self._cut = -1
        self._synced = 0
        self._now = -math.inf
        # No entry is later than this.
        self._high = -math.inf
        # The entries older than every entry after them, from _head on: their numbers
        # and times, both increasing.
        self._minima: list[int] = []
        self._minima_ts: list[float] = []
        self._head = 0
        # Every entry's time, sorted, and its number beside it; entries dropped from
        # the window stay until the index is rebuilt (numbers below _base).
        self._times: list[float] = []
        self._numbers: list[int] = []

    def add(self, ts: float, user_key: str, failed: bool) -> None:
        entries = self.entries
        if len(entries) == BURST_MAX_ENTRIES:
            self._drop_oldest()
        entries.append((ts, user_key, failed))
        if self._users is not None:
            self._index(self._base + len(entries) - 1, ts)
        elif len(entries) > TRACK_FROM:
            self._users = {}
            for number, (entry_ts, _, _) in enumerate(entries, self._base):
                self._index(number, entry_ts)

    def _index(self, number: int, ts: float) -> None:
        minima, minima_ts = self._minima, self._minima_ts
        while len(minima) > self._head and minima_ts[-1] >= ts:
            minima.pop()
            minima_ts.pop()
        minima.append(number)
        minima_ts.append(ts)
        if len(self._times) >= 2 * BURST_MAX_ENTRIES:
            self._reindex()
        times = self._times
        if ts >= self._high:
            self._high = ts
            times.append(ts)
            self._numbers.append(number)
        else:
            at = bisect_right(times, ts)
            times.insert(at, ts)
            self._numbers.insert(at, number)

    def _reindex(self) -> None:
        """Leave out of the index by time the entries no longer in the window."""
        base = self._base
        kept = [(ts, n) for ts, n in zip(self._times, self._numbers, strict=True) if n >= base]
        self._times = [ts for ts, _ in kept]
        self._numbers = [n for _, n in kept]

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
        ts, user, failed = self.entries.popleft()
        number = self._base
        self._base += 1
        if self._users is None:
            return
        if self._counted and self._cut < number < self._synced and ts <= self._now:
            self._uncount(user, failed)
        head = self._head
        minima = self._minima
        if head < len(minima) and minima[head] == number:
            head += 1
            if head > 64 and head * 2 > len(minima):
                del minima[:head]
                del self._minima_ts[:head]
                head = 0
            self._head = head

    def _count(self, user: str, failed: bool) -> None:
        users = self._users
        assert users is not None
        users[user] = users.get(user, 0) + 1
        self._failures += failed

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
        entries = self.entries
        users = self._users
        if users is None:
            return walk(entries, now)
        base = self._base
        end = base + len(entries)
        head = self._head
        found = bisect_right(self._minima_ts, now - BURST_WINDOW_S, head)
        cut = self._minima[found - 1] if found > head else base - 1
        if not self._counted:
            users.clear()
            self._failures = 0
            synced = cut + 1
        else:
            synced = self._synced
            old_cut, old_now = self._cut, self._now
            # The cut moved: the entries it passed leave the counts, or join them.
            if cut > old_cut:
                for number in range(old_cut + 1 if old_cut >= base else base, min(cut + 1, synced)):
                    ts, user, failed = entries[number - base]
                    if ts <= old_now:
                        left = users[user] - 1
                        if left:
                            users[user] = left
                        else:
                            del users[user]
                        self._failures -= failed
            elif cut < old_cut:
                for number in range(cut + 1 if cut >= base else base, old_cut + 1):
                    ts, user, failed = entries[number - base]
                    if ts <= old_now:
                        users[user] = users.get(user, 0) + 1
                        self._failures += failed
            # ``now`` moved: the entries after the cut that it passed join, or leave.
            if old_now < now:
                if old_now < self._high:
                    self._cross(old_now, now, cut, synced, True)
            elif now < old_now:
                self._cross(now, old_now, cut, synced, False)
        # The entries added since the last query.
        for number in range(synced if synced > cut else cut + 1, end):
            ts, user, failed = entries[number - base]
            if ts <= now:
                users[user] = users.get(user, 0) + 1
                self._failures += failed
        self._counted = True
        self._cut = cut
        self._now = now
        self._synced = end
        return len(users), self._failures

    def _cross(self, low: float, high: float, cut: int, synced: int, join: bool) -> None:
        """Count (``join``) or uncount the entries in (cut, synced) timed in (low, high]."""
        times, numbers, entries, base = self._times, self._numbers, self.entries, self._base
        for i in range(bisect_right(times, low), len(times)):
            if times[i] > high:
                break
            number = numbers[i]
            if base <= number and cut < number < synced:
                _, user, failed = entries[number - base]
                if join:
                    self._count(user, failed)
                else:
                    self._uncount(user, failed)


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
