"""A network's crowd: which other users have succeeded from it, and since which day.

The cross-user record behind population familiarity. An office's NAT, a
carrier's address pool or a VPN provider's exit is used by many of a bank's
customers over many days; an attacker's own network is not. Per network (the
key the burst windows use: the ASN with an ASN database, otherwise the /24 or
/48), the record keeps each user whose event succeeded there with the UTC day of
their first such event, at most ``CROWD_MAX_USERS`` users at a time and for at
most ``CROWD_MAX_AGE_DAYS``. An event is judged against the users *established*
on its network: others than its own user, recorded on an earlier day and not
too long ago, so that a same-day burst (credential stuffing) makes no crowd.

Like the burst windows, the record depends on the event stream alone (success is
the event's own field, never a decision), so the distributed backtest can run it
per network partition with the same answers. Users are kept as the keys the
profiles are stored under (keyed hashes), and erasure removes them: every store
keeps, per user, the networks the user is recorded in.
"""

from __future__ import annotations

from collections.abc import Iterable

_DAY_S = 86400.0
# Users kept per network: enough to tell a crowd from a household.
CROWD_MAX_USERS = 32
# A membership older than this no longer counts and is forgotten when next seen.
CROWD_MAX_AGE_DAYS = 90


def crowd_day(ts: float) -> int:
    """The UTC day number of an event time."""
    return int(ts // _DAY_S)


def established(entries: Iterable[tuple[str, int]], user_key: str, day: int) -> tuple[int, int]:
    """(users, distinct first days) among ``entries`` other than ``user_key``, recorded
    on an earlier day than ``day`` and within the age limit.

    >>> established([("a", 10), ("b", 10), ("c", 12), ("me", 3)], "me", 12)
    (2, 1)
    """
    start = day - CROWD_MAX_AGE_DAYS
    users = 0
    days: set[int] = set()
    for user, first in entries:
        if user != user_key and start <= first < day:
            users += 1
            days.add(first)
    return users, len(days)


class Crowd:
    """One network's record: user key -> day of the user's first success there."""

    __slots__ = ("members",)

    def __init__(self) -> None:
        self.members: dict[str, int] = {}

    def counts(self, user_key: str, day: int) -> tuple[int, int]:
        return established(self.members.items(), user_key, day)

    def note(self, user_key: str, day: int) -> bool:
        """Record a success of ``user_key`` on ``day``; True when the user was added."""
        members = self.members
        if user_key in members:
            return False
        start = day - CROWD_MAX_AGE_DAYS
        for user in [u for u, first in members.items() if first < start]:
            del members[user]
        if len(members) >= CROWD_MAX_USERS:
            return False
        members[user_key] = day
        return True


class CrowdTable:
    """Crowds keyed by network, with each user's networks for erasure; bounded."""

    def __init__(self, max_keys: int = 1_000_000) -> None:
        self._crowds: dict[str, Crowd] = {}
        self._of_user: dict[str, set[str]] = {}
        self._max_keys = max_keys

    def counts(self, network: str, user_key: str, ts: float) -> tuple[int, int]:
        crowd = self._crowds.get(network)
        return crowd.counts(user_key, crowd_day(ts)) if crowd is not None else (0, 0)

    def note(self, network: str, user_key: str, ts: float) -> None:
        """Note a successful event of ``user_key`` on ``network``."""
        crowd = self._crowds.get(network)
        if crowd is None:
            if len(self._crowds) >= self._max_keys:
                self._prune(crowd_day(ts))
            crowd = self._crowds[network] = Crowd()
        before = set(crowd.members)
        if crowd.note(user_key, crowd_day(ts)):
            self._of_user.setdefault(user_key, set()).add(network)
        for gone in before - set(crowd.members):
            self._drop_membership(gone, network)

    def forget(self, user_key: str) -> None:
        """Remove ``user_key`` from every crowd (erasure)."""
        for network in self._of_user.pop(user_key, ()):
            crowd = self._crowds.get(network)
            if crowd is not None:
                crowd.members.pop(user_key, None)
                if not crowd.members:
                    del self._crowds[network]

    def purge(self, before_day: int) -> None:
        """Forget memberships recorded before ``before_day`` (retention)."""
        for network, crowd in list(self._crowds.items()):
            for user in [u for u, first in crowd.members.items() if first < before_day]:
                del crowd.members[user]
                self._drop_membership(user, network)
            if not crowd.members:
                del self._crowds[network]

    def users_of(self, network: str) -> set[str]:
        """The users recorded on ``network`` (for tests of erasure)."""
        crowd = self._crowds.get(network)
        return set(crowd.members) if crowd is not None else set()

    def _drop_membership(self, user_key: str, network: str) -> None:
        networks = self._of_user.get(user_key)
        if networks is not None:
            networks.discard(network)
            if not networks:
                del self._of_user[user_key]

    def _prune(self, day: int) -> None:
        """Drop aged memberships; if still full, the crowds of a single user.

        Aged memberships never count again, so dropping them changes no answer; a
        table that is still full (a million networks used within the age limit)
        forgets the networks only one user has succeeded from, which are no crowd yet.
        """
        self.purge(day - CROWD_MAX_AGE_DAYS)
        if len(self._crowds) >= self._max_keys:
            for network in [n for n, c in self._crowds.items() if len(c.members) <= 1]:
                for user in self._crowds.pop(network).members:
                    self._drop_membership(user, network)
