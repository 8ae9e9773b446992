"""In-memory profile store: for the backtest, tests and single-process trials."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from risk_engine.profiles.bursts import BurstTable
from risk_engine.profiles.crowds import CrowdTable, crowd_day
from risk_engine.profiles.model import BurstCounts, Profile
from risk_engine.profiles.store import BurstNote, EventLabel

T = TypeVar("T")


@dataclass(slots=True)
class _Challenge:
    record: bytes
    expires_at: float
    used: bool = False


class MemoryStore:
    """Profiles kept as live objects (no serialisation), bounded by an LRU cap.

    ``update`` mutates the stored object in place under a lock, so callers should
    compute first and mutate last (the engine does: features, then learning). An
    exception from ``fn`` therefore leaves whatever it had already changed, and
    ``get`` returns the live object, not a copy. There is no retention: the LRU
    cap and ``purge`` bound memory.
    """

    def __init__(self, max_profiles: int | None = None) -> None:
        self._profiles: OrderedDict[str, Profile] = OrderedDict()
        # Wall-clock time of each profile's last update, for ``purge``.
        self._updated_at: dict[str, float] = {}
        self._challenges: dict[str, _Challenge] = {}
        self._max = max_profiles
        self._lock = threading.Lock()
        self._bursts = BurstTable()
        self._crowds = CrowdTable()
        # event id -> [user_key, label or ""]; user_key -> its event ids (for erasure).
        self._events: dict[str, list[str]] = {}
        self._user_events: dict[str, set[str]] = {}

    def update(self, user_key: str, fn: Callable[[Profile], T]) -> T:
        with self._lock:
            created = user_key not in self._profiles
            try:
                return fn(self._live(user_key))
            except BaseException:
                # A profile made for this call only must not outlive a refused update.
                if created:
                    self._profiles.pop(user_key, None)
                    self._updated_at.pop(user_key, None)
                raise

    def update_event(self, note: BurstNote, fn: Callable[[Profile, BurstCounts], T]) -> T:
        with self._lock:
            bursts = self._bursts.counts(
                note.ip_key,
                note.network,
                note.ts,
                self._crowds.counts(note.network, note.user_key, note.ts),
            )
            profile = self._live(note.user_key)
            result = fn(profile, bursts)
            self._bursts.record(note.ip_key, note.network, note.user_key, note.ts, note.failed)
            if note.succeeded:
                self._crowds.note(note.network, note.user_key, note.ts)
            profile.note_window(f"ip:{note.ip_key}", note.ts)
            profile.note_window(f"net:{note.network}", note.ts)
            if note.event_id and note.event_id not in self._events:
                self._events[note.event_id] = [note.user_key, ""]
                self._user_events.setdefault(note.user_key, set()).add(note.event_id)
            return result

    def _live(self, user_key: str) -> Profile:
        """The user's live profile (created when absent), marked as updated now."""
        profile = self._profiles.get(user_key)
        if profile is None:
            profile = Profile(user_key=user_key)
            self._profiles[user_key] = profile
            if self._max is not None and len(self._profiles) > self._max:
                evicted, _ = self._profiles.popitem(last=False)
                self._updated_at.pop(evicted, None)
        elif self._max is not None:
            self._profiles.move_to_end(user_key)
        self._updated_at[user_key] = time.time()
        return profile

    def get(self, user_key: str) -> Profile | None:
        with self._lock:
            return self._profiles.get(user_key)

    def delete(self, user_key: str) -> bool:
        with self._lock:
            self._updated_at.pop(user_key, None)
            profile = self._profiles.pop(user_key, None)
            self._crowds.forget(user_key)
            if profile is not None:
                self._bursts.forget(profile.windows, user_key)
                for challenge_id in profile.challenge_ids():
                    self._challenges.pop(challenge_id, None)
            for event_id in self._user_events.pop(user_key, ()):
                self._events.pop(event_id, None)
            return profile is not None

    def label_event(self, event_id: str, label: str) -> EventLabel | None:
        with self._lock:
            kept = self._events.get(event_id)
            if kept is None:
                return None
            new = not kept[1]
            if new:
                kept[1] = label
            return EventLabel(kept[0], kept[1], new)

    def sealing_keys(self) -> dict[str, str]:
        with self._lock:
            return {p.ref: p.data_key for p in self._profiles.values()}

    def burst_counts(self, ip_key: str, network: str, now: float) -> BurstCounts:
        with self._lock:
            return self._bursts.counts(ip_key, network, now)

    def record_burst(
        self, ip_key: str, network: str, user_key: str, ts: float, failed: bool
    ) -> None:
        with self._lock:
            self._bursts.record(ip_key, network, user_key, ts, failed)

    def save_challenge(self, challenge_id: str, record: bytes, ttl_s: float, now: float) -> None:
        with self._lock:
            self._challenges[challenge_id] = _Challenge(record, now + ttl_s)

    def load_challenge(self, challenge_id: str, now: float) -> bytes | None:
        with self._lock:
            challenge = self._challenges.get(challenge_id)
            if challenge is None or now >= challenge.expires_at:
                return None
            return challenge.record

    def claim_challenge(self, challenge_id: str, now: float) -> bool:
        with self._lock:
            challenge = self._challenges.get(challenge_id)
            if challenge is None or challenge.used or now >= challenge.expires_at:
                return False
            challenge.used = True
            return True

    def purge(self, older_than: float) -> int:
        wall_now = time.time()
        with self._lock:
            stale = [key for key, ts in self._updated_at.items() if ts < older_than]
            for key in stale:
                del self._updated_at[key]
                self._profiles.pop(key, None)
                for event_id in self._user_events.pop(key, ()):
                    self._events.pop(event_id, None)
            # Crowd memberships live as long as the profiles (by event day).
            self._crowds.purge(crowd_day(older_than))
            expired = [cid for cid, c in self._challenges.items() if wall_now >= c.expires_at]
            for cid in expired:
                del self._challenges[cid]
            return len(stale)

    def count(self) -> int:
        with self._lock:
            return len(self._profiles)

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self._profiles)
