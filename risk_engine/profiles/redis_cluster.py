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

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster
from redis.exceptions import MovedError, RedisClusterException, RedisError, WatchError

from risk_engine.errors import ConfigurationError, ProfileStoreError
from risk_engine.profiles.model import BurstCounts, Profile
from risk_engine.profiles.redis import (
    _CLAIM_SCRIPT,
    _LABEL_SCRIPT,
    _SCAN_BATCH,
    _WATCH_TRIES,
    _back_off,
    _burst_member,
    _glob_escape,
    _note,
    _tally,
    _text,
    _window_reads,
    redact_url,
)
from risk_engine.profiles.store import BurstNote, EventLabel

T = TypeVar("T")
_Command = tuple[str | bytes | int | float, ...]
_ClusterErrors = (RedisError, RedisClusterException)
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


class RedisClusterStore:
    """Profiles, burst windows and challenges in a Redis Cluster (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "risk-engine",
        retention_days: float = 180.0,
        socket_timeout: float = 0.5,
    ) -> None:
        self._safe_url = redact_url(url)
        if retention_days <= 0:
            raise ConfigurationError(
                f"profile retention must be positive, got {retention_days!r} days",
                field="retention_days",
            )
        if "{" in prefix or "}" in prefix:
            # A brace in the prefix would become the hash tag of every key.
            raise ConfigurationError(
                f"a Redis Cluster key prefix must have no braces, got {prefix!r}", field="prefix"
            )
        self._prefix = prefix
        self._retention_s = math.ceil(retention_days * 86400.0)
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
    def prefix(self) -> str:
        return self._prefix

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
                except _ClusterErrors as exc:
                    self._fail(exc, "connect")
            return self._cluster_client

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
        user_notes: list[_Command] = (
            [("SADD", mine, note.event_id), ("EXPIRE", mine, self._retention_s)]
            if note.event_id
            else []
        )

        def step(profile: Profile) -> tuple[T, list[_Command]]:
            bursts = self.burst_counts(note.ip_key, note.network, note.ts)
            result = fn(profile, bursts)
            for window, ts in marks:
                profile.note_window(window, ts)
            return result, user_notes

        def attempt() -> tuple[T] | None:
            return self._user_transaction(key, note.user_key, step)

        result = self._optimistic("update_event", attempt)
        member = _burst_member(note.user_key, note.ts, note.failed)
        after = [command for window in windows for command in _note(window, member, note.ts)]
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
        step: Callable[[Profile], tuple[T, list[_Command]]],
    ) -> tuple[T] | None:
        """WATCH and read the profile, run ``step``, commit it with the user's commands.

        ``(step's value,)``, or None when overtaken (the WATCH fired, or the slot moved).
        """
        in_fn = False
        try:
            pipe = self._node(key).pipeline(transaction=True)
        except _ClusterErrors as exc:
            self._fail(exc, "update")
        try:
            pipe.watch(key)  # type: ignore[no-untyped-call]  # unannotated in redis-py
            raw = pipe.get(key)
            profile = Profile(user_key=user_key) if raw is None else Profile.loads(raw)
            in_fn = True
            result, commands = step(profile)
            in_fn = False
            pipe.multi()
            pipe.set(key, profile.dumps(), ex=self._retention_s)
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
        except _ClusterErrors as exc:
            if in_fn:
                raise
            self._fail(exc, "update")
        finally:
            _reset_quietly(pipe)
        return (result,)

    def _optimistic(self, action: str, attempt: Callable[[], tuple[T] | None]) -> T:
        for tries in range(_WATCH_TRIES):
            done = attempt()
            if done is not None:
                return done[0]
            time.sleep(_back_off(tries))
        raise ProfileStoreError(
            f"Redis profile store {self._safe_url}: {action} of one profile lost"
            f" {_WATCH_TRIES} races in a row to concurrent writers",
            url=self._safe_url,
        )

    def get(self, user_key: str) -> Profile | None:
        try:
            raw = self._cluster.get(self._profile_key(user_key))
        except _ClusterErrors as exc:
            self._fail(exc, "get")
        return None if raw is None else Profile.loads(raw)

    def delete(self, user_key: str) -> bool:
        """The burst entries, challenges and events first; the profile last, under WATCH."""
        key, mine = self._profile_key(user_key), self._user_events_key(user_key)
        suffix = f":{user_key}".encode()

        def attempt() -> tuple[bool] | None:
            try:
                pipe = self._node(key).pipeline(transaction=True)
            except _ClusterErrors as exc:
                self._fail(exc, "delete")
            try:
                pipe.watch(key, mine)  # type: ignore[no-untyped-call]  # unannotated in redis-py
                raw = pipe.get(key)
                profile = None if raw is None else Profile.loads(raw)
                events = [e.decode() for e in pipe.smembers(mine)]  # type: ignore[union-attr]
                others: list[_Command] = []
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
                pipe.delete(mine, key)
                pipe.execute()
            except WatchError:
                return None
            except MovedError:
                self._moved()
                return None
            except _ClusterErrors as exc:
                self._fail(exc, "delete")
            finally:
                _reset_quietly(pipe)
            return (profile is not None,)

        return self._optimistic("delete", attempt)

    def label_event(self, event_id: str, label: str) -> EventLabel | None:
        try:
            script = self._cluster.register_script(_LABEL_SCRIPT)
            reply = script(keys=[self._event_key(event_id)], args=[label])
        except _ClusterErrors as exc:
            self._fail(exc, "label_event")
        if reply is None:
            return None
        user, kept, new = reply
        return EventLabel(_text(user), _text(kept), bool(new))

    def sealing_keys(self) -> dict[str, str]:
        """Every profile's ref and key, by SCAN of every primary (linear; offline)."""
        keys: dict[str, str] = {}
        try:
            batch: list[bytes] = []
            for name in self._scan_profiles():
                batch.append(name)
                if len(batch) >= _SCAN_BATCH:
                    self._collect_keys(batch, keys)
                    batch = []
            self._collect_keys(batch, keys)
        except _ClusterErrors as exc:
            self._fail(exc, "sealing_keys")
        return keys

    def _collect_keys(self, names: list[bytes], keys: dict[str, str]) -> None:
        if not names:
            return
        for raw in self._cluster.mget_nonatomic(names):
            if raw is not None:
                profile = Profile.loads(raw)
                keys[profile.ref] = profile.data_key

    def _scan_profiles(self) -> Any:
        pattern = f"{_glob_escape(self._prefix)}:profile:*"
        return self._cluster.scan_iter(match=pattern, count=1000)

    # -- burst windows ------------------------------------------------------------------

    def burst_counts(self, ip_key: str, network: str, now: float) -> BurstCounts:
        windows = (self._burst_key("ip", ip_key), self._burst_key("net", network))
        ip_members, net_members = self._pipelined(_window_reads(windows, now), "burst_counts")
        return BurstCounts(*_tally(ip_members), *_tally(net_members))

    def record_burst(
        self, ip_key: str, network: str, user_key: str, ts: float, failed: bool
    ) -> None:
        member = _burst_member(user_key, ts, failed)
        windows = (self._burst_key("ip", ip_key), self._burst_key("net", network))
        self._pipelined([c for w in windows for c in _note(w, member, ts)], "record_burst")

    def _pipelined(self, commands: Sequence[_Command], action: str) -> list[Any]:
        """Run ``commands`` (any slots) in one cluster pipeline, not atomically; their replies."""
        if not commands:
            return []
        try:
            pipe = self._cluster.pipeline()  # type: ignore[no-untyped-call]
            for command in commands:
                pipe.execute_command(*command)
            replies: list[Any] = pipe.execute()
        except _ClusterErrors as exc:
            self._fail(exc, action)
        for reply in replies:
            if isinstance(reply, Exception):
                self._fail(RedisError(str(reply)), action)
        return replies

    # -- challenges ---------------------------------------------------------------------

    def save_challenge(self, challenge_id: str, record: bytes, ttl_s: float, now: float) -> None:
        key = self._challenge_key(challenge_id)
        try:
            pipe = self._node(key).pipeline(transaction=True)
            pipe.delete(key)
            pipe.hset(key, mapping={"record": record, "expires_at": repr(now + ttl_s), "used": 0})
            pipe.pexpire(key, max(1, math.ceil(ttl_s * 1000.0)))
            pipe.execute()
        except MovedError as exc:
            self._moved()
            self._fail(exc, "save_challenge")
        except _ClusterErrors as exc:
            self._fail(exc, "save_challenge")

    def load_challenge(self, challenge_id: str, now: float) -> bytes | None:
        try:
            record, expires_at = self._cluster.hmget(
                self._challenge_key(challenge_id), ["record", "expires_at"]
            )
        except _ClusterErrors as exc:
            self._fail(exc, "load_challenge")
        if record is None or expires_at is None or now >= float(expires_at):
            return None
        return record if isinstance(record, bytes) else str(record).encode()

    def claim_challenge(self, challenge_id: str, now: float) -> bool:
        try:
            script = self._cluster.register_script(_CLAIM_SCRIPT)
            won = script(keys=[self._challenge_key(challenge_id)], args=[repr(now)])
        except _ClusterErrors as exc:
            self._fail(exc, "claim_challenge")
        return bool(won)

    # -- housekeeping -------------------------------------------------------------------

    def purge(self, older_than: float) -> int:
        """Nothing to do: profiles and challenges carry TTLs and Redis expires them."""
        return 0

    def count(self) -> int:
        """Profiles under this prefix, by SCAN of every primary (linear; for operators)."""
        try:
            return sum(1 for _ in self._scan_profiles())
        except _ClusterErrors as exc:
            self._fail(exc, "count")

    def ping(self) -> None:
        try:
            self._cluster.ping()
        except _ClusterErrors as exc:
            self._fail(exc, "ping")

    def close(self) -> None:
        with self._lock:
            if self._cluster_client is not None:
                self._cluster_client.close()
                self._cluster_client = None

    # -- key names: a hash tag on what the transaction shares -------------------------

    def _profile_key(self, user_key: str) -> str:
        return f"{self._prefix}:profile:{{{user_key}}}"

    def _user_events_key(self, user_key: str) -> str:
        return f"{self._prefix}:user-events:{{{user_key}}}"

    def _burst_key(self, kind: str, value: str) -> str:
        return f"{self._prefix}:burst:{kind}:{{{value}}}"

    def _window_key(self, window: str) -> str:
        """A profile's window name (``ip:...``, ``net:...``) as this store's key."""
        kind, _, value = window.partition(":")
        return self._burst_key(kind, value)

    def _challenge_key(self, challenge_id: str) -> str:
        return f"{self._prefix}:challenge:{{{challenge_id}}}"

    def _event_key(self, event_id: str) -> str:
        return f"{self._prefix}:event:{{{event_id}}}"

    def _fail(self, exc: Exception, action: str) -> NoReturn:
        raise ProfileStoreError(
            f"Redis profile store {self._safe_url}: {action} failed: {type(exc).__name__}: {exc}",
            url=self._safe_url,
        ) from exc


def _reset_quietly(pipe: redis.client.Pipeline) -> None:
    """Return the pipeline's connection; a failure here must not mask the real outcome."""
    try:
        pipe.reset()
    except RedisError:
        if pipe.connection is not None:
            pipe.connection.disconnect()  # type: ignore[no-untyped-call]
            pipe.connection_pool.release(pipe.connection)
            pipe.connection = None
