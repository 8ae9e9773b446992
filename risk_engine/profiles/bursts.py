"""Sliding windows of recent events per address and network, for burst signals.

Shared by the in-memory and SQLite stores; Redis keeps the same shape in sorted sets.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from risk_engine.profiles.model import BurstCounts
from risk_engine.profiles.store import BURST_MAX_ENTRIES, BURST_WINDOW_S


@dataclass(slots=True)
class BurstWindow:
    """Recent (ts, user, failed) entries for one key, oldest first, bounded."""

    entries: deque[tuple[float, str, bool]] = field(
        default_factory=lambda: deque(maxlen=BURST_MAX_ENTRIES)
    )

    def add(self, ts: float, user_key: str, failed: bool) -> None:
        self.entries.append((ts, user_key, failed))

    def counts(self, now: float) -> tuple[int, int]:
        """Distinct users and failures in (now - window, now]."""
        start = now - BURST_WINDOW_S
        users: set[str] = set()
        failures = 0
        for ts, user, failed in reversed(self.entries):
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

    def counts(self, ip_key: str, network: str, now: float) -> BurstCounts:
        ip_users, ip_failures = self._counts(f"ip:{ip_key}", now)
        net_users, net_failures = self._counts(f"net:{network}", now)
        return BurstCounts(ip_users, ip_failures, net_users, net_failures)

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
