"""The one protocol that every profile store implements.

A store keeps profiles (read-modify-write is atomic per user: ``update`` runs the
caller's function on the freshest profile and saves the result, retrying on a
concurrent write where the backend is optimistic), the cross-user burst windows
(distinct users and failures per address and per network), the networks'
crowds (which users succeeded there since which day; profiles.crowds), the step-up
challenge bindings (an opaque record per challenge, claimable exactly once) and,
for the feedback rules, which user each decided event belonged to and the one
label it got. ``delete`` erases all of a user's data from every one of them.

Times that the caller passes in (``now``, ``ts``) are epoch seconds chosen by the
caller, so that tests and the backtest control time; the only wall-clock time a
store keeps on its own is when each profile was last written, for retention.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol, TypeVar

from risk_engine.profiles.model import BurstCounts, Profile

T = TypeVar("T")

# How far back the burst windows look, in seconds.
BURST_WINDOW_S = 3600.0
# Entries kept per address or network key: bounds memory under a stuffing attack.
BURST_MAX_ENTRIES = 512


class BurstNote(NamedTuple):
    """One event as the burst windows and crowds see it: address, network, user, time.

    A named tuple: made for every event, in 0.7 µs where a frozen dataclass took 0.9.
    """

    ip_key: str
    network: str
    user_key: str
    ts: float
    failed: bool
    # The decided event's id, kept (with the user and, later, its label) for feedback;
    # empty where nobody will send feedback (backtest, training).
    event_id: str = ""
    # The event succeeded: its user joins the network's crowd (profiles.crowds).
    succeeded: bool = False


class EventLabel(NamedTuple):
    """A decided event's label after ``label_event``: whose event, which label, set now."""

    user_key: str
    label: str
    new: bool


class ProfileStore(Protocol):
    """Per-user profiles plus cross-user burst counters."""

    def update_event(self, note: BurstNote, fn: Callable[[Profile, BurstCounts], T]) -> T:
        """One event's whole transaction: what ``decide`` and the training replay call.

        Counts the bursts of ``note``'s address and network before this event, and
        the network's crowd established before this event's day without this user
        (profiles.crowds), runs ``fn`` on the profile of ``note.user_key`` with those
        counts and saves the profile as ``update`` does, then notes the event in the
        burst windows and, when it succeeded, its user in the network's crowd. Apart
        from the crowd it equals ``burst_counts``, ``update`` and ``record_burst`` in
        a row, done in as few round trips as the backend allows; where the backend
        has transactions the profile and the notes are committed together or not at all.

        The profile remembers the windows noted (``Profile.note_window``) for erasure,
        the store the crowds a user is in; a ``note.event_id`` is kept as an event of
        the user (see ``label_event``).
        """
        ...

    def update(self, user_key: str, fn: Callable[[Profile], T]) -> T:
        """Run ``fn`` on the user's profile (a fresh one if none) and save it atomically.

        Returns what ``fn`` returns; an exception from ``fn`` propagates unchanged.
        Where the backend is optimistic, ``fn`` may run more than once, each time on
        a freshly read profile, and only the run that commits is kept.
        """
        ...

    def get(self, user_key: str) -> Profile | None:
        """The stored profile, or None."""
        ...

    def delete(self, user_key: str) -> bool:
        """Erase everything kept of a user; True if there was a profile.

        The profile (with its ref and data key, which shreds what was sealed under
        it), the user's entries in the burst windows it names, the user's place in
        every network's crowd, the challenges of its pending step-ups and the user's
        decided events. Where the backend keeps
        deleted bytes around (SQLite's free pages and WAL) they are overwritten.
        """
        ...

    def label_event(self, event_id: str, label: str) -> EventLabel | None:
        """Set a decided event's label unless it has one; None if no such event is kept.

        Atomic: of concurrent labels of one event exactly one is set, and every
        caller gets that one back (``new`` only for the caller that set it).
        """
        ...

    def sealing_keys(self) -> dict[str, str]:
        """Ref -> data key of every profile kept: what opens the records sealed for them."""
        ...

    def burst_counts(self, ip_key: str, network: str, now: float) -> BurstCounts:
        """Distinct users and failures per address and network in the window before ``now``."""
        ...

    def record_burst(
        self, ip_key: str, network: str, user_key: str, ts: float, failed: bool
    ) -> None:
        """Note one event in the burst windows."""
        ...

    def save_challenge(self, challenge_id: str, record: bytes, ttl_s: float, now: float) -> None:
        """Bind ``record`` to an unused challenge that expires at ``now + ttl_s``.

        Saving an id again replaces the earlier binding; ids are meant to be fresh.
        """
        ...

    def load_challenge(self, challenge_id: str, now: float) -> bytes | None:
        """The challenge's record (used or not), or None when unknown or expired at ``now``."""
        ...

    def claim_challenge(self, challenge_id: str, now: float) -> bool:
        """Atomically mark a live, unused challenge used; False if unknown, expired or used.

        Of any number of concurrent claims of one challenge exactly one returns True:
        this is what makes a step-up result single use.
        """
        ...

    def purge(self, older_than: float) -> int:
        """Delete profiles and events not written since ``older_than``; expired challenges.

        "Last written" and "expired" here are by the wall clock, since this is
        housekeeping, not scoring. Returns how many profiles went; backends that
        expire keys by themselves (Redis TTLs) may return 0.
        """
        ...

    def count(self) -> int:
        """How many profiles the store holds."""
        ...

    def ping(self) -> None:
        """Raise ProfileStoreError when the backend is unreachable."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
