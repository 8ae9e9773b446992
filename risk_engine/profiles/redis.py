"""Redis profile store: shared by every engine process, expiring data by key TTLs.

Layout under ``prefix`` (so that several deployments can share one Redis):

* ``{prefix}:profile:{user_key}``: the profile's checksummed binary form, EXPIREd
  after the retention on every write, so inactive users vanish without a purge job
  (a record that fails its checksum moves to ``{prefix}:quarantine:{user_key}``);
* ``{prefix}:burst:ip:{ip_key}`` and ``{prefix}:burst:net:{network}``: sorted sets
  scored by event time, trimmed to the window and to BURST_MAX_ENTRIES;
* ``{prefix}:challenge:{id}``: a hash (record, expires_at, used) with a PX expiry;
* ``{prefix}:event:{event_id}``: a decided event's hash (user, label), and
  ``{prefix}:user-events:{user_key}`` the set of a user's event ids (for erasure),
  both EXPIREd after the retention.

``update`` is optimistic (WATCH/MULTI/EXEC): a write by someone else between the
read and the commit makes it run ``fn`` again on the fresh profile. ``update_event``
is the same transaction with the burst windows folded in, in two round trips: one
write of WATCH, GET and both window reads, then one of MULTI, SET, the burst notes
and EXEC. What a one-node and a cluster store do alike is in ``redis_common``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError, WatchError
from redis.retry import Retry

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

# Seconds between the pool's PINGs of an idle connection before reusing it.
_HEALTH_CHECK_INTERVAL_S = 30
# The longest one socket operation may wait. A decision runs on the event loop and a
# Redis call blocks it (README, "Sizing"): this bounds what a frozen Redis costs.
STORE_TIMEOUT_S = 0.05


class RedisStore(RedisLayout):
    """Profiles, burst windows and challenges in Redis, for multi-process deployments."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "risk-engine",
        retention_days: float = 180.0,
        socket_timeout: float = STORE_TIMEOUT_S,
    ) -> None:
        super().__init__(url, prefix=prefix, retention_days=retention_days)
        try:
            # The pool connects lazily: constructing the store never touches the network.
            self._pool = redis.ConnectionPool.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                health_check_interval=_HEALTH_CHECK_INTERVAL_S,
                # One quick retry survives a connection that the server dropped while
                # idle, without turning an outage into seconds of waiting per call. A
                # timeout is not retried: a frozen server would cost the timeout twice.
                retry=Retry(
                    ExponentialWithJitterBackoff(base=0.01, cap=0.05),
                    retries=1,
                    supported_errors=(RedisConnectionError,),
                ),
            )
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"unusable Redis URL {self._safe_url!r}: {exc}", field="url"
            ) from exc
        self._client = redis.Redis(connection_pool=self._pool)

    @property
    def _reads(self) -> redis.Redis:
        return self._client

    def _transaction(self, key: str) -> redis.client.Pipeline:
        return self._client.pipeline(transaction=True)

    def _pipelined(self, commands: Sequence[Command], action: str) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        try:
            for command in commands:
                _queue(pipe, command)
            replies: list[Any] = pipe.execute()
        except RedisError as exc:
            self._fail(exc, action)
        finally:
            reset_quietly(pipe)
        return replies

    def update(self, user_key: str, fn: Callable[[Profile], T]) -> T:
        key = self._profile_key(user_key)
        for attempt in range(self.watch_tries):
            pipe = self._client.pipeline(transaction=True)
            # Set while ``fn`` runs, so that its own exceptions pass through untouched.
            in_fn = False
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]  # unannotated in redis-py
                raw = pipe.get(key)
                profile = self._readable(user_key, raw)
                in_fn = True
                result = fn(profile)
                in_fn = False
                pipe.multi()
                pipe.set(key, profile.stored(), ex=self._retention_s)
                pipe.execute()
            except WatchError:
                # Another writer committed between our read and EXEC (or the connection
                # dropped while watching): run again on the fresh profile.
                if in_fn:
                    raise
            except RedisError as exc:
                if in_fn:
                    raise
                self._fail(exc, "update")
            else:
                return result
            finally:
                reset_quietly(pipe)
            time.sleep(back_off(attempt))
        self._lost_races("update")

    def update_event(self, note: BurstNote, fn: Callable[[Profile, BurstCounts], T]) -> T:
        """``burst_counts``, ``update`` and ``record_burst`` as one transaction, two round trips.

        The profile and the burst notes commit in one MULTI/EXEC under the WATCH of
        the profile, so that a concurrent ``update`` or ``update_event`` of the user
        makes ``fn`` run again, on the fresh profile and fresh counts, as in ``update``.
        """
        key = self._profile_key(note.user_key)
        windows = (self._burst_key("ip", note.ip_key), self._burst_key("net", note.network))
        reads: list[Command] = [
            ("WATCH", key),
            ("GET", key),
            *window_reads(windows, note.ts),
            self._crowd_read(note.network),
        ]
        member = burst_member(note.user_key, note.ts, note.failed)
        notes = [command for window in windows for command in note_burst(window, member, note.ts)]
        if note.event_id:
            notes += self._event_notes(note.event_id, note.user_key)
        marks = ((f"ip:{note.ip_key}", note.ts), (f"net:{note.network}", note.ts))
        for attempt in range(self.watch_tries):
            committed = self._event_attempt(note, key, reads, notes, marks, fn)
            if committed is not None:
                return committed[0]
            time.sleep(back_off(attempt))
        self._lost_races("update_event")

    def _event_attempt(
        self,
        note: BurstNote,
        key: str,
        reads: Sequence[Command],
        notes: Sequence[Command],
        marks: Sequence[tuple[str, float]],
        fn: Callable[[Profile, BurstCounts], T],
    ) -> tuple[T] | None:
        """One optimistic try of ``update_event``: ``(fn's value,)``, or None when overtaken.

        Works on one connection of the pool directly, since a redis-py pipeline cannot
        send WATCH and reads in one write. The connection goes back to the pool only
        when known to be clean (no WATCH left, no reply unread); otherwise it is
        disconnected first.
        """
        try:
            conn = self._pool.get_connection()
        except RedisError as exc:
            self._fail(exc, "update_event")
        clean = False
        try:
            try:
                # Nothing is written yet: the pool's retry policy applies, as to any read.
                raw, ip_members, net_members, crowd_reply = conn.retry.call_with_retry(
                    lambda: _exchange(conn, reads, check_health=True)[1:],
                    lambda _: _disconnect(conn),
                )
            except RedisError as exc:
                self._fail(exc, "update_event")
            profile = self._readable(note.user_key, raw)
            crowd = crowd_members(crowd_reply)
            bursts = BurstCounts(
                *tally(ip_members),
                *tally(net_members),
                *established(crowd, note.user_key, crowd_day(note.ts)),
            )
            # A reconnect from here to EXEC would drop the WATCH unseen: refuse it.
            _on_connect(conn, self._refuse_reconnect)
            try:
                result = fn(profile, bursts)
            except BaseException:
                clean = _unwatch(conn)
                raise
            for window, ts in marks:
                profile.note_window(window, ts)
            crowd_notes, user_crowd_notes = self._crowd_notes(note, crowd)
            writes: list[Command] = [
                ("MULTI",),
                ("SET", key, profile.stored(), "EX", self._retention_s),
                *notes,
                *crowd_notes,
                *user_crowd_notes,
                ("EXEC",),
            ]
            try:
                # No health check: its PING could reconnect and lose the WATCH. No retry
                # either: once EXEC is sent, a second try could apply the event twice.
                replies = _exchange(conn, writes, check_health=False)
            except _ReconnectedWhileWatching:
                # Refused before anything was sent on the new socket: a lost race.
                return None
            except RedisError as exc:
                # EXEC may or may not have run: say so rather than run fn again.
                self._fail(exc, "update_event")
            clean = True
            executed = replies[-1]
            if executed is None:
                # The WATCH fired: EXEC ran nothing.
                return None
            for reply in executed:
                # Redis does not roll back: the commands before the failed one took effect.
                if isinstance(reply, ResponseError):
                    self._fail(reply, "update_event")
            return (result,)
        finally:
            _off_connect(conn, self._refuse_reconnect)
            if not clean:
                _disconnect(conn)
            self._pool.release(conn)

    def _refuse_reconnect(self, connection: Connection) -> None:
        """Connect callback while a connection watches: its WATCH died with the old socket."""
        raise _ReconnectedWhileWatching(
            f"Redis profile store {self._safe_url}: reconnected between WATCH and EXEC"
        )

    def _event_notes(self, event_id: str, user_key: str) -> list[Command]:
        """Keep a decided event as the user's (the first user to claim an id keeps it)."""
        event, mine = self._event_key(event_id), self._user_events_key(user_key)
        return [
            ("HSETNX", event, "user", user_key),
            ("EXPIRE", event, self._retention_s),
            ("SADD", mine, event_id),
            ("EXPIRE", mine, self._retention_s),
        ]

    def delete(self, user_key: str) -> bool:
        """Erase the profile, the burst entries and challenges it names, the user's events.

        Optimistic like ``update``: a concurrent write of the profile reads it again.
        """
        key, mine = self._profile_key(user_key), self._user_events_key(user_key)
        crowds = self._user_crowds_key(user_key)
        suffix = f":{user_key}".encode()
        for attempt in range(self.watch_tries):
            pipe = self._client.pipeline(transaction=True)
            try:
                pipe.watch(key, mine, crowds)  # type: ignore[no-untyped-call]  # unannotated in redis-py
                raw = pipe.get(key)
                profile = None if raw is None else loads_or_none(raw)
                events = [e.decode() for e in pipe.smembers(mine)]  # type: ignore[union-attr]
                joined: set[bytes] = pipe.smembers(crowds)  # type: ignore[assignment]
                windows = [self._window_key(w) for w in (profile.windows if profile else ())]
                doomed: list[tuple[str, list[bytes]]] = []
                for window in windows:
                    members: list[bytes] = pipe.zrange(window, 0, -1)  # type: ignore[assignment]
                    doomed.append((window, [m for m in members if m.endswith(suffix)]))
                pipe.multi()
                for window, members in doomed:
                    if members:
                        pipe.zrem(window, *members)
                for challenge_id in profile.challenge_ids() if profile else ():
                    pipe.delete(self._challenge_key(challenge_id))
                for event_id in events:
                    pipe.delete(self._event_key(event_id))
                for command in self._forget_crowds(user_key, joined):
                    _queue(pipe, command)
                pipe.delete(mine, crowds, key, self._quarantine_key(user_key))
                pipe.execute()
            except WatchError:
                pass
            except RedisError as exc:
                self._fail(exc, "delete")
            else:
                return profile is not None
            finally:
                reset_quietly(pipe)
            time.sleep(back_off(attempt))
        self._lost_races("delete")

    def close(self) -> None:
        self._client.close()
        self._pool.disconnect()


class _ReconnectedWhileWatching(RedisError):
    """A watching connection was re-established: the new one watches nothing."""


def _exchange(conn: Connection, commands: Sequence[Command], *, check_health: bool) -> list[Any]:
    """Send ``commands`` in one write and read their replies: one round trip.

    An error reply raises (ResponseError) with the later replies still unread, so
    the caller must then drop the connection.
    """
    chunks: list[bytes] = conn.pack_commands(commands)  # type: ignore[no-untyped-call]
    conn.send_packed_command([b"".join(chunks)], check_health)  # type: ignore[no-untyped-call]
    return [conn.read_response() for _ in commands]


def _unwatch(conn: Connection) -> bool:
    """UNWATCH, for a connection going back to the pool; False if it is now in doubt."""
    try:
        _exchange(conn, [("UNWATCH",)], check_health=False)
    except Exception:
        return False
    return True


def _queue(pipe: redis.client.Pipeline, command: Command) -> None:
    """Queue one command on a pipeline (its reply parsed as the typed method's would be)."""
    pipe.execute_command(*command)  # type: ignore[no-untyped-call]


def _disconnect(conn: Connection) -> None:
    conn.disconnect()  # type: ignore[no-untyped-call]


def _on_connect(conn: Connection, callback: Callable[[Connection], None]) -> None:
    conn.register_connect_callback(callback)  # type: ignore[no-untyped-call]


def _off_connect(conn: Connection, callback: Callable[[Connection], None]) -> None:
    conn.deregister_connect_callback(callback)  # type: ignore[no-untyped-call]
