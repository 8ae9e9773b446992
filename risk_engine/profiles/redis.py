"""Redis profile store: shared by every engine process, expiring data by key TTLs.

Layout under ``prefix`` (so that several deployments can share one Redis):

* ``{prefix}:profile:{user_key}``: the profile's versioned JSON, EXPIREd after the
  retention on every write, so inactive users vanish without a purge job;
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
and EXEC.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from risk_engine.errors import ConfigurationError, ProfileStoreError, StoreUnavailableError
from risk_engine.profiles.integrity import CorruptProfileError, Incidents
from risk_engine.profiles.model import BurstCounts, Profile
from risk_engine.profiles.store import BURST_MAX_ENTRIES, BURST_WINDOW_S, BurstNote, EventLabel

T = TypeVar("T")
# One Redis command as redis-py packs it: the name, then the arguments.
_Command = tuple[str | bytes | int | float, ...]

# Optimistic retries of one update before giving up on a hopelessly hot key.
_WATCH_TRIES = 100
# Jittered back-off between retries: doubling from ~0.5 ms, at most 20 ms.
_BACKOFF_BASE_S = 0.0005
_BACKOFF_CAP_S = 0.02
# Seconds between the pool's PINGs of an idle connection before reusing it.
_HEALTH_CHECK_INTERVAL_S = 30
# The longest one socket operation may wait. A decision runs on the event loop and a
# Redis call blocks it (README, "Sizing"): this bounds what a frozen Redis costs.
STORE_TIMEOUT_S = 0.05
_BURST_TTL_S = math.ceil(BURST_WINDOW_S)
# Entries are trimmed only once two windows older than the newest insert, so that an
# event recorded slightly out of order (a skewed clock) cannot trim entries that a
# query at an earlier ``now`` still counts.
_BURST_TRIM_AGE_S = 2 * BURST_WINDOW_S

# Claim in one server-side step, so that of concurrent claims exactly one wins.
# ARGV[1] is the caller's ``now``; live means now < expires_at, as in every store.
_CLAIM_SCRIPT = """
local fields = redis.call('HMGET', KEYS[1], 'expires_at', 'used')
if not fields[1] or fields[2] ~= '0' or tonumber(ARGV[1]) >= tonumber(fields[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'used', '1')
return 1
"""

# Label a kept event unless labelled: [user, label, 1 if set now], or nil if not kept.
_LABEL_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local new = redis.call('HSETNX', KEYS[1], 'label', ARGV[1])
return {redis.call('HGET', KEYS[1], 'user'), redis.call('HGET', KEYS[1], 'label'), new}
"""
# Profiles read per round trip by ``sealing_keys``.
_SCAN_BATCH = 500


class RedisStore:
    """Profiles, burst windows and challenges in Redis, for multi-process deployments."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "risk-engine",
        retention_days: float = 180.0,
        socket_timeout: float = STORE_TIMEOUT_S,
    ) -> None:
        self._safe_url = redact_url(url)
        if retention_days <= 0:
            raise ConfigurationError(
                f"profile retention must be positive, got {retention_days!r} days",
                field="retention_days",
            )
        self._prefix = prefix
        self._retention_s = math.ceil(retention_days * 86400.0)
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
        self.incidents = Incidents()
        self._claim = self._client.register_script(_CLAIM_SCRIPT)
        self._label = self._client.register_script(_LABEL_SCRIPT)

    @property
    def prefix(self) -> str:
        return self._prefix

    def update(self, user_key: str, fn: Callable[[Profile], T]) -> T:
        key = self._profile_key(user_key)
        for attempt in range(_WATCH_TRIES):
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
                _reset_quietly(pipe)
            time.sleep(_back_off(attempt))
        self._lost_races("update")

    def update_event(self, note: BurstNote, fn: Callable[[Profile, BurstCounts], T]) -> T:
        """``burst_counts``, ``update`` and ``record_burst`` as one transaction, two round trips.

        The profile and the burst notes commit in one MULTI/EXEC under the WATCH of
        the profile, so that a concurrent ``update`` or ``update_event`` of the user
        makes ``fn`` run again, on the fresh profile and fresh counts, as in ``update``.
        """
        key = self._profile_key(note.user_key)
        windows = (self._burst_key("ip", note.ip_key), self._burst_key("net", note.network))
        reads: list[_Command] = [("WATCH", key), ("GET", key), *_window_reads(windows, note.ts)]
        member = _burst_member(note.user_key, note.ts, note.failed)
        notes = [command for window in windows for command in _note(window, member, note.ts)]
        if note.event_id:
            notes += self._event_notes(note.event_id, note.user_key)
        marks = ((f"ip:{note.ip_key}", note.ts), (f"net:{note.network}", note.ts))
        for attempt in range(_WATCH_TRIES):
            committed = self._event_attempt(note.user_key, key, reads, notes, marks, fn)
            if committed is not None:
                return committed[0]
            time.sleep(_back_off(attempt))
        self._lost_races("update_event")

    def _event_attempt(
        self,
        user_key: str,
        key: str,
        reads: Sequence[_Command],
        notes: Sequence[_Command],
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
                raw, ip_members, net_members = conn.retry.call_with_retry(
                    lambda: _exchange(conn, reads, check_health=True)[1:],
                    lambda _: _disconnect(conn),
                )
            except RedisError as exc:
                self._fail(exc, "update_event")
            profile = self._readable(user_key, raw)
            bursts = BurstCounts(*_tally(ip_members), *_tally(net_members))
            # A reconnect from here to EXEC would drop the WATCH unseen: refuse it.
            _on_connect(conn, self._refuse_reconnect)
            try:
                result = fn(profile, bursts)
            except BaseException:
                clean = _unwatch(conn)
                raise
            for window, ts in marks:
                profile.note_window(window, ts)
            writes: list[_Command] = [
                ("MULTI",),
                ("SET", key, profile.stored(), "EX", self._retention_s),
                *notes,
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

    def _readable(self, user_key: str, raw: bytes | str | None) -> Profile:
        """The stored profile; a fresh one when absent, or when corrupt (then quarantined)."""
        if raw is None:
            return Profile(user_key=user_key)
        try:
            return Profile.loads(raw)
        except CorruptProfileError as exc:
            self._quarantine(user_key, raw, exc.message)
            return Profile(user_key=user_key)

    def _quarantine(self, user_key: str, raw: bytes | str, reason: str) -> None:
        """Keep a corrupt profile aside (for the retention), log and count it."""
        with contextlib.suppress(RedisError):  # the user starts afresh either way
            self._client.set(self._quarantine_key(user_key), raw, ex=self._retention_s)
        self.incidents.note(
            "quarantined",
            "Redis profile store %s: a stored profile is corrupt (%s); kept at %s,"
            " the user starts afresh",
            self._safe_url,
            reason,
            self._quarantine_key(user_key),
        )

    def _refuse_reconnect(self, connection: Connection) -> None:
        """Connect callback while a connection watches: its WATCH died with the old socket."""
        raise _ReconnectedWhileWatching(
            f"Redis profile store {self._safe_url}: reconnected between WATCH and EXEC"
        )

    def get(self, user_key: str) -> Profile | None:
        try:
            raw = self._client.get(self._profile_key(user_key))
        except RedisError as exc:
            self._fail(exc, "get")
        return None if raw is None else _loads_or_none(raw)

    def _event_notes(self, event_id: str, user_key: str) -> list[_Command]:
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
        suffix = f":{user_key}".encode()
        for attempt in range(_WATCH_TRIES):
            pipe = self._client.pipeline(transaction=True)
            try:
                pipe.watch(key, mine)  # type: ignore[no-untyped-call]  # unannotated in redis-py
                raw = pipe.get(key)
                profile = None if raw is None else _loads_or_none(raw)
                events = [e.decode() for e in pipe.smembers(mine)]  # type: ignore[union-attr]
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
                pipe.delete(mine, key, self._quarantine_key(user_key))
                pipe.execute()
            except WatchError:
                pass
            except RedisError as exc:
                self._fail(exc, "delete")
            else:
                return profile is not None
            finally:
                _reset_quietly(pipe)
            time.sleep(_back_off(attempt))
        self._lost_races("delete")

    def label_event(self, event_id: str, label: str) -> EventLabel | None:
        try:
            reply = self._label(keys=[self._event_key(event_id)], args=[label])
        except RedisError as exc:
            self._fail(exc, "label_event")
        if reply is None:
            return None
        user, kept, new = reply
        return EventLabel(_text(user), _text(kept), bool(new))

    def sealing_keys(self) -> dict[str, str]:
        """Every profile's ref and key, by SCAN and MGET (linear in the keyspace; offline)."""
        pattern = f"{_glob_escape(self._prefix)}:profile:*"
        keys: dict[str, str] = {}
        try:
            batch: list[bytes] = []
            for name in self._client.scan_iter(match=pattern, count=1000):
                batch.append(name)
                if len(batch) >= _SCAN_BATCH:
                    self._collect_keys(batch, keys)
                    batch = []
            self._collect_keys(batch, keys)
        except RedisError as exc:
            self._fail(exc, "sealing_keys")
        return keys

    def _collect_keys(self, names: list[bytes], keys: dict[str, str]) -> None:
        if not names:
            return
        for raw in self._client.mget(names):
            profile = None if raw is None else _loads_or_none(raw)
            if profile is not None:
                keys[profile.ref] = profile.data_key

    def burst_counts(self, ip_key: str, network: str, now: float) -> BurstCounts:
        windows = (self._burst_key("ip", ip_key), self._burst_key("net", network))
        pipe = self._client.pipeline(transaction=False)
        try:
            for command in _window_reads(windows, now):
                _queue(pipe, command)
            ip_members, net_members = pipe.execute()
        except RedisError as exc:
            self._fail(exc, "burst_counts")
        finally:
            _reset_quietly(pipe)
        ip_users, ip_failures = _tally(ip_members)
        net_users, net_failures = _tally(net_members)
        return BurstCounts(ip_users, ip_failures, net_users, net_failures)

    def record_burst(
        self, ip_key: str, network: str, user_key: str, ts: float, failed: bool
    ) -> None:
        member = _burst_member(user_key, ts, failed)
        pipe = self._client.pipeline(transaction=False)
        try:
            for key in (self._burst_key("ip", ip_key), self._burst_key("net", network)):
                for command in _note(key, member, ts):
                    _queue(pipe, command)
            pipe.execute()
        except RedisError as exc:
            self._fail(exc, "record_burst")
        finally:
            _reset_quietly(pipe)

    def save_challenge(self, challenge_id: str, record: bytes, ttl_s: float, now: float) -> None:
        key = self._challenge_key(challenge_id)
        pipe = self._client.pipeline(transaction=True)
        try:
            pipe.delete(key)
            pipe.hset(key, mapping={"record": record, "expires_at": repr(now + ttl_s), "used": 0})
            # Redis forgets it by its own clock; ``expires_at`` decides by the caller's.
            pipe.pexpire(key, max(1, math.ceil(ttl_s * 1000.0)))
            pipe.execute()
        except RedisError as exc:
            self._fail(exc, "save_challenge")
        finally:
            _reset_quietly(pipe)

    def load_challenge(self, challenge_id: str, now: float) -> bytes | None:
        try:
            record, expires_at = self._client.hmget(
                self._challenge_key(challenge_id), ["record", "expires_at"]
            )
        except RedisError as exc:
            self._fail(exc, "load_challenge")
        if record is None or expires_at is None or now >= float(expires_at):
            return None
        return record if isinstance(record, bytes) else record.encode()

    def claim_challenge(self, challenge_id: str, now: float) -> bool:
        try:
            won = self._claim(keys=[self._challenge_key(challenge_id)], args=[repr(now)])
        except RedisError as exc:
            self._fail(exc, "claim_challenge")
        return bool(won)

    def purge(self, older_than: float) -> int:
        """Nothing to do: profiles and challenges carry TTLs and Redis expires them."""
        return 0

    def count(self) -> int:
        """Profiles under this prefix, by SCAN (linear in the keyspace; for operators)."""
        pattern = f"{_glob_escape(self._prefix)}:profile:*"
        try:
            return sum(1 for _ in self._client.scan_iter(match=pattern, count=1000))
        except RedisError as exc:
            self._fail(exc, "count")

    def ping(self) -> None:
        try:
            self._client.ping()
        except RedisError as exc:
            self._fail(exc, "ping")

    def close(self) -> None:
        self._client.close()
        self._pool.disconnect()

    def _profile_key(self, user_key: str) -> str:
        return f"{self._prefix}:profile:{user_key}"

    def _burst_key(self, kind: str, value: str) -> str:
        return f"{self._prefix}:burst:{kind}:{value}"

    def _challenge_key(self, challenge_id: str) -> str:
        return f"{self._prefix}:challenge:{challenge_id}"

    def _window_key(self, window: str) -> str:
        """A profile's window name (``ip:...``, ``net:...``) as this store's key."""
        return f"{self._prefix}:burst:{window}"

    def _event_key(self, event_id: str) -> str:
        return f"{self._prefix}:event:{event_id}"

    def _user_events_key(self, user_key: str) -> str:
        return f"{self._prefix}:user-events:{user_key}"

    def _quarantine_key(self, user_key: str) -> str:
        return f"{self._prefix}:quarantine:{user_key}"

    def _fail(self, exc: RedisError, action: str) -> NoReturn:
        if isinstance(exc, RedisTimeoutError | RedisConnectionError):
            raise StoreUnavailableError(
                f"Redis profile store {self._safe_url}: {action} failed: {type(exc).__name__}:"
                f" {exc}",
                url=self._safe_url,
            ) from exc
        raise ProfileStoreError(
            f"Redis profile store {self._safe_url}: {action} failed: {type(exc).__name__}: {exc}",
            url=self._safe_url,
        ) from exc

    def _lost_races(self, action: str) -> NoReturn:
        raise ProfileStoreError(
            f"Redis profile store {self._safe_url}: {action} of one profile lost "
            f"{_WATCH_TRIES} races in a row to concurrent writers",
            url=self._safe_url,
        )


class _ReconnectedWhileWatching(RedisError):
    """A watching connection was re-established: the new one watches nothing."""


def _loads_or_none(raw: bytes | str) -> Profile | None:
    """The stored profile, or None when corrupt (its user's next update quarantines it)."""
    try:
        return Profile.loads(raw)
    except CorruptProfileError:
        return None


def redact_url(url: str) -> str:
    """``url`` with any password (in the user info or a ``password=`` query) masked."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        # Unparseable (e.g. a bad port): better to show nothing than a secret.
        return "<unparseable URL>"
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{hostport}"
    query = parts.query
    if "password=" in query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _back_off(attempt: int) -> float:
    """Seconds to wait before optimistic retry ``attempt + 1``: jittered, doubling, capped."""
    return random.uniform(0.0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** min(attempt, 16)))


def _burst_member(user_key: str, ts: float, failed: bool) -> str:
    """A burst window member ``ts:failed:nonce:user``."""
    # The nonce keeps two identical events distinct members of the set.
    return f"{ts!r}:{int(failed)}:{random.getrandbits(64):016x}:{user_key}"


def _note(key: str, member: str, ts: float) -> list[_Command]:
    """What noting an event does to one window: add, trim by age and by rank, expire."""
    return [
        ("ZADD", key, ts, member),
        ("ZREMRANGEBYSCORE", key, "-inf", ts - _BURST_TRIM_AGE_S),
        # Keep the newest BURST_MAX_ENTRIES: bounded memory under a flood.
        ("ZREMRANGEBYRANK", key, 0, -(BURST_MAX_ENTRIES + 1)),
        ("EXPIRE", key, _BURST_TTL_S),
    ]


def _window_reads(keys: Sequence[str], now: float) -> list[_Command]:
    """The members of each window in (now - window, now], oldest first.

    "(" makes the lower bound exclusive: an entry exactly one window old is out.
    """
    start = f"({now - BURST_WINDOW_S!r}"
    return [("ZRANGEBYSCORE", key, start, now) for key in keys]


def _exchange(conn: Connection, commands: Sequence[_Command], *, check_health: bool) -> list[Any]:
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


def _queue(pipe: redis.client.Pipeline, command: _Command) -> None:
    """Queue one command on a pipeline (its reply parsed as the typed method's would be)."""
    pipe.execute_command(*command)  # type: ignore[no-untyped-call]


def _disconnect(conn: Connection) -> None:
    conn.disconnect()  # type: ignore[no-untyped-call]


def _on_connect(conn: Connection, callback: Callable[[Connection], None]) -> None:
    conn.register_connect_callback(callback)  # type: ignore[no-untyped-call]


def _off_connect(conn: Connection, callback: Callable[[Connection], None]) -> None:
    conn.deregister_connect_callback(callback)  # type: ignore[no-untyped-call]


def _tally(members: list[bytes]) -> tuple[int, int]:
    """Distinct users and failures among burst members ``ts:failed:nonce:user``."""
    users: set[bytes] = set()
    failures = 0
    for member in members:
        _, failed, _, user = member.split(b":", 3)
        users.add(user)
        failures += failed == b"1"
    return len(users), failures


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    """``text`` as a literal inside a Redis MATCH pattern."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _reset_quietly(pipe: redis.client.Pipeline) -> None:
    """Return the pipeline's connection; a failure here must not mask the real outcome."""
    try:
        pipe.reset()
    except RedisError:
        # reset() disconnects on ConnectionError itself; anything else leaves the
        # connection in doubt, so drop it rather than hand it back watching.
        if pipe.connection is not None:
            pipe.connection.disconnect()  # type: ignore[no-untyped-call]
            pipe.connection_pool.release(pipe.connection)
            pipe.connection = None
