"""A store wrapper that stops asking a store that is down, and remembers what failed.

A decision runs on the server's event loop, so every store call that waits, waits
for every request of the process (see the README's "Sizing"). The stores bound
one call by their timeout; this bounds the calls: once a call finds the backend
unreachable or too slow (``StoreUnavailableError``), every call for the next
``pause_s`` fails at once with the same error (the engine answers those degraded,
under the action's fail mode), and then one call is let through to try again.

It also keeps the last other failure, for readiness: a store whose ping answers
may still be failing its writes (a corrupt page, a full disk), and ``trouble``
says so for ``window_s`` after it. (An unreachable store fails the ping itself.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from risk_engine.errors import ProfileStoreError, StoreUnavailableError
from risk_engine.profiles.model import BurstCounts, Profile
from risk_engine.profiles.store import BurstNote, EventLabel, ProfileStore

T = TypeVar("T")
log = logging.getLogger("risk_engine.profiles")

# How long calls fail at once after the backend was found down, before one tries again.
PAUSE_S = 1.0
# How long a failed store call keeps readiness failing.
TROUBLE_WINDOW_S = 30.0


class GuardedStore:
    """A ProfileStore that fails fast while its backend is down (see the module docstring)."""

    def __init__(
        self, inner: ProfileStore, *, pause_s: float = PAUSE_S, window_s: float = TROUBLE_WINDOW_S
    ) -> None:
        self.inner = inner
        self._pause_s = pause_s
        self._window_s = window_s
        self._lock = threading.Lock()
        # Monotonic time until which calls fail at once, and why.
        self._down_until = 0.0
        self._down_reason = ""
        # The last failure of any kind: when (monotonic) and what.
        self._failed_at = float("-inf")
        self._failure = ""

    def trouble(self) -> str | None:
        """What failed within the last ``window_s`` (other than reaching it), or None."""
        with self._lock:
            if time.monotonic() - self._failed_at <= self._window_s:
                return self._failure
        return None

    def _call(self, fn: Callable[[], T]) -> T:
        now = time.monotonic()
        if now < self._down_until:
            raise StoreUnavailableError(
                f"{self._down_reason} (not tried again for {self._pause_s:g} s)"
            )
        try:
            result = fn()
        except StoreUnavailableError as exc:
            with self._lock:
                was_up = self._down_until == 0.0
                self._down_until = time.monotonic() + self._pause_s
                self._down_reason = exc.message
            if was_up:
                log.error(
                    "%s; answering degraded, trying again every %g s", exc.message, self._pause_s
                )
            raise
        except ProfileStoreError as exc:
            with self._lock:
                self._failed_at, self._failure = time.monotonic(), exc.message
            raise
        if self._down_until != 0.0:
            with self._lock:
                if self._down_until != 0.0:
                    self._down_until = 0.0
                    log.warning("profile store answers again")
        return result

    def update(self, user_key: str, fn: Callable[[Profile], T]) -> T:
        return self._call(lambda: self.inner.update(user_key, fn))

    def update_event(self, note: BurstNote, fn: Callable[[Profile, BurstCounts], T]) -> T:
        return self._call(lambda: self.inner.update_event(note, fn))

    def get(self, user_key: str) -> Profile | None:
        return self._call(lambda: self.inner.get(user_key))

    def delete(self, user_key: str) -> bool:
        return self._call(lambda: self.inner.delete(user_key))

    def label_event(self, event_id: str, label: str) -> EventLabel | None:
        return self._call(lambda: self.inner.label_event(event_id, label))

    def sealing_keys(self) -> dict[str, str]:
        return self._call(self.inner.sealing_keys)

    def burst_counts(self, ip_key: str, network: str, now: float) -> BurstCounts:
        return self._call(lambda: self.inner.burst_counts(ip_key, network, now))

    def record_burst(
        self, ip_key: str, network: str, user_key: str, ts: float, failed: bool
    ) -> None:
        self._call(lambda: self.inner.record_burst(ip_key, network, user_key, ts, failed))

    def save_challenge(self, challenge_id: str, record: bytes, ttl_s: float, now: float) -> None:
        self._call(lambda: self.inner.save_challenge(challenge_id, record, ttl_s, now))

    def load_challenge(self, challenge_id: str, now: float) -> bytes | None:
        return self._call(lambda: self.inner.load_challenge(challenge_id, now))

    def claim_challenge(self, challenge_id: str, now: float) -> bool:
        return self._call(lambda: self.inner.claim_challenge(challenge_id, now))

    def purge(self, older_than: float) -> int:
        return self._call(lambda: self.inner.purge(older_than))

    def count(self) -> int:
        return self._call(self.inner.count)

    def ping(self) -> None:
        self._call(self.inner.ping)

    def close(self) -> None:
        self.inner.close()
