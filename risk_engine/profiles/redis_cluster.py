"""Redis Cluster profile store: the Redis layout with hash tags, each transaction in one slot.

A cluster runs a MULTI/EXEC (and a WATCH) only over keys of one hash slot, and
the burst windows are cross-user by nature: no slot can hold a user's profile
and the windows of every address the user comes from. So the keys carry hash
tags (the part in braces is what is hashed):

* ``{prefix}:profile:{<user_key>}`` and ``{prefix}:user-events:{<user_key>}``:
  one slot per user;
* ``{prefix}:burst:ip:{<ip_key>}`` and ``{prefix}:burst:net:{<network>}``: a slot
  per window;
* ``{prefix}:challenge:{<id>}`` and ``{prefix}:event:{<event_id>}``: a slot each.

``update_event`` is then three steps: the two windows read (pipelined to their
nodes); on the user's node WATCH, GET, ``fn``, and MULTI, SET of the profile and
the user's event list, EXEC; then, once that committed, the burst notes and the
event's record (pipelined, not atomic). What stays atomic: the profile and the
user's event list commit together or not at all, and a concurrent write of the
user makes ``fn`` run again on the fresh profile, as on one Redis. What does not:
the burst counts ``fn`` saw may miss an event noted meanwhile, and a failure
after the commit loses that event's burst notes (the windows count it once too
few, never twice) and its record (feedback for it is refused as unknown).
Erasure deletes the burst entries, challenges and events first and the profile
last, so that a failure part-way leaves the profile to find them by again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster
from redis.exceptions import MovedError, RedisClusterException, RedisError, WatchError

from risk_engine.errors import ConfigurationError
from risk_engine.profiles.crowds import crowd_day, established
from risk_engine.profiles.model import BurstCounts, Profile
from risk_engine.profiles.redis_common import (
    Command,
    RedisLayout,
    back_off,
    burst_member,
    crowd_members,
    loads_or_none,
    note_burst,
    reset_quietly,
    tally,
    window_reads,
)
from risk_engine.profiles.store import BurstNote

T = TypeVar("T")
_TRUE = {"1", "true", "yes", "on"}


def is_cluster_url(url: str) -> bool:
    """``redis+cluster://`` (``rediss+cluster://``), or a Redis URL with ``cluster=true``."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        return False
    scheme = scheme.lower()
    if scheme in ("redis+cluster", "rediss+cluster"):
        return True
    if scheme not in ("redis", "rediss"):
        return False
    query = urlsplit(url).query
    return any(k == "cluster" and v.lower() in _TRUE for k, v in parse_qsl(query))


def _plain_url(url: str) -> str:
    """The URL redis-py's cluster client takes: scheme redis(s)://, no ``cluster`` option."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower().removesuffix("+cluster")
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "cluster"])
    return urlunsplit((scheme, parts.netloc, parts.path, query, parts.fragment))


class RedisClusterStore(RedisLayout):
    """Profiles, burst windows and challenges in a Redis Cluster (see the module docstring)."""

    hash_tags: ClassVar[bool] = True
    errors: ClassVar[tuple[type[Exception], ...]] = (RedisError, RedisClusterException)

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "risk-engine",
        retention_days: float = 180.0,
        socket_timeout: float = 0.5,
    ) -> None:
        super().__init__(url, prefix=prefix, retention_days=retention_days)
        if "{" in prefix or "}" in prefix:
            # A brace in the prefix would become the hash tag of every key.
            raise ConfigurationError(
                f"a Redis Cluster key prefix must have no braces, got {prefix!r}", field="prefix"
            )
        self._url = _plain_url(url)
        self._socket_timeout = socket_timeout
        try:
            parts = urlsplit(self._url)
            if parts.path not in ("", "/", "/0"):
                raise ValueError("a Redis Cluster has only database 0")
        except ValueError as exc:
            raise ConfigurationError(
                f"unusable Redis Cluster URL {self._safe_url!r}: {exc}", field="url"
            ) from exc
        # The client learns the slot map by connecting: made on first use, so that
        # constructing the store never touches the network (as with one Redis).
        self._lock = threading.Lock()
        self._cluster_client: RedisCluster | None = None

    @property
    def _cluster(self) -> RedisCluster:
        client = self._cluster_client
        if client is not None:
            return client
        with self._lock:
            if self._cluster_client is None:
                try:
                    self._cluster_client = RedisCluster.from_url(
                        self._url,
                        socket_timeout=self._socket_timeout,
                        socket_connect_timeout=self._socket_timeout,
                    )
                except self.errors as exc:
                    self._fail(exc, "connect")
            return self._cluster_client

    @property
    def _reads(self) -> RedisCluster:
        return self._cluster

    def _transaction(self, key: str) -> redis.client.Pipeline:
        return self._node(key).pipeline(transaction=True)

    def _mget(self, names: list[bytes]) -> list[Any]:
        return list(self._cluster.mget_nonatomic(names))

    def _node(self, key: str) -> redis.Redis:
        """The client of the primary holding ``key``'s slot (where its transaction runs)."""
        node = self._cluster.get_node_from_key(key)  # type: ignore[no-untyped-call]
        client: redis.Redis | None = node.redis_connection if node is not None else None
        if client is None:
            raise RedisClusterException(f"no node serves the slot of {key!r}")
        return client

    def _moved(self) -> None:
        """A slot moved under a transaction: learn the new slot map before trying again."""
        self._cluster.nodes_manager.initialize()

    # -- profiles -----------------------------------------------------------------------

    def update(self, user_key: str, fn: Callable[[Profile], T]) -> T:
        key = self._profile_key(user_key)

        def attempt() -> tuple[T] | None:
            return self._user_transaction(key, user_key, lambda p: (fn(p), []))

        return self._optimistic("update", attempt)

    def update_event(self, note: BurstNote, fn: Callable[[Profile, BurstCounts], T]) -> T:
        """Counts, then the user's transaction, then the burst notes (three steps)."""
        key = self._profile_key(note.user_key)
        windows = (self._burst_key("ip", note.ip_key), self._burst_key("net", note.network))
        marks = ((f"ip:{note.ip_key}", note.ts), (f"net:{note.network}", note.ts))
        mine = self._user_events_key(note.user_key)
        user_notes: list[Command] = (
            [("SADD", mine, note.event_id), ("EXPIRE", mine, self._retention_s)]
            if note.event_id
            else []
        )

        crowd_after: list[Command] = []

        def step(profile: Profile) -> tuple[T, list[Command]]:
            ip_members, net_members, crowd_reply = self._pipelined(
                [*window_reads(windows, note.ts), self._crowd_read(note.network)], "update_event"
            )
            crowd = crowd_members(crowd_reply)
            bursts = BurstCounts(
                *tally(ip_members),
                *tally(net_members),
                *established(crowd, note.user_key, crowd_day(note.ts)),
            )
            result = fn(profile, bursts)
            for window, ts in marks:
                profile.note_window(window, ts)
            crowd_notes, user_crowd_notes = self._crowd_notes(note, crowd)
            crowd_after[:] = crowd_notes
            return result, [*user_notes, *user_crowd_notes]

        def attempt() -> tuple[T] | None:
            return self._user_transaction(key, note.user_key, step)

        result = self._optimistic("update_event", attempt)
        member = burst_member(note.user_key, note.ts, note.failed)
        after = [command for window in windows for command in note_burst(window, member, note.ts)]
        after += crowd_after
        if note.event_id:
            event = self._event_key(note.event_id)
            after += [
                ("HSETNX", event, "user", note.user_key),
                ("EXPIRE", event, self._retention_s),
            ]
        self._pipelined(after, "update_event")
        return result

    def _user_transaction(
        self,
        key: str,
        user_key: str,
        step: Callable[[Profile], tuple[T, list[Command]]],
    ) -> tuple[T] | None:
        """WATCH and read the profile, run ``step``, commit it with the user's commands.

        ``(step's value,)``, or None when overtaken (the WATCH fired, or the slot moved).
        """
        in_fn = False
        try:
            pipe = self._node(key).pipeline(transaction=True)
        except self.errors as exc:
            self._fail(exc, "update")
        try:
            pipe.watch(key)  # type: ignore[no-untyped-call]  # unannotated in redis-py
            raw = pipe.get(key)
            profile = self._readable(user_key, raw)
            in_fn = True
            result, commands = step(profile)
            in_fn = False
            pipe.multi()
            pipe.set(key, profile.stored(), ex=self._retention_s)
            for command in commands:
                pipe.execute_command(*command)  # type: ignore[no-untyped-call]
            pipe.execute()
        except WatchError:
            if in_fn:
                raise
            return None
        except MovedError:
            if in_fn:
                raise
            self._moved()
            return None
        except self.errors as exc:
            if in_fn:
                raise
            self._fail(exc, "update")
        finally:
            reset_quietly(pipe)
        return (result,)

    def _optimistic(self, action: str, attempt: Callable[[], tuple[T] | None]) -> T:
        for tries in range(self.watch_tries):
            done = attempt()
            if done is not None:
                return done[0]
            time.sleep(back_off(tries))
        self._lost_races(action)

    def delete(self, user_key: str) -> bool:
        """The burst entries, challenges and events first; the profile last, under WATCH."""
        key, mine = self._profile_key(user_key), self._user_events_key(user_key)
        crowds = self._user_crowds_key(user_key)
        suffix = f":{user_key}".encode()

        def attempt() -> tuple[bool] | None:
            try:
                pipe = self._node(key).pipeline(transaction=True)
            except self.errors as exc:
                self._fail(exc, "delete")
            try:
                pipe.watch(key, mine, crowds)  # type: ignore[no-untyped-call]  # unannotated in redis-py
                raw = pipe.get(key)
                profile = None if raw is None else loads_or_none(raw)
                events = [e.decode() for e in pipe.smembers(mine)]  # type: ignore[union-attr]
                joined: set[bytes] = pipe.smembers(crowds)  # type: ignore[assignment]
                others: list[Command] = self._forget_crowds(user_key, joined)
                for window in profile.windows if profile else ():
                    window_key = self._window_key(window)
                    members: list[bytes] = self._cluster.zrange(window_key, 0, -1)  # type: ignore[assignment]
                    doomed = [m for m in members if m.endswith(suffix)]
                    if doomed:
                        others.append(("ZREM", window_key, *doomed))
                for challenge_id in profile.challenge_ids() if profile else ():
                    others.append(("DEL", self._challenge_key(challenge_id)))
                others += [("DEL", self._event_key(event_id)) for event_id in events]
                self._pipelined(others, "delete")
                pipe.multi()
                pipe.delete(mine, crowds, key, self._quarantine_key(user_key))
                pipe.execute()
            except WatchError:
                return None
            except MovedError:
                self._moved()
                return None
            except self.errors as exc:
                self._fail(exc, "delete")
            finally:
                reset_quietly(pipe)
            return (profile is not None,)

        return self._optimistic("delete", attempt)

    def _pipelined(self, commands: Sequence[Command], action: str) -> list[Any]:
        """Run ``commands`` (any slots) in one cluster pipeline, not atomically; their replies."""
        if not commands:
            return []
        try:
            pipe = self._cluster.pipeline()  # type: ignore[no-untyped-call]
            for command in commands:
                pipe.execute_command(*command)
            replies: list[Any] = pipe.execute()
        except self.errors as exc:
            self._fail(exc, action)
        for reply in replies:
            if isinstance(reply, Exception):
                self._fail(RedisError(str(reply)), action)
        return replies

    def close(self) -> None:
        with self._lock:
            if self._cluster_client is not None:
                self._cluster_client.close()
                self._cluster_client = None
