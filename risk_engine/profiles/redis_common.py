"""What the one-node and the cluster Redis stores share: layout, reads, challenges, bursts.

``RedisLayout`` holds everything whose commands touch one key (or are pipelined
without a transaction), so that both stores read, quarantine, label, scan and
count the same way; each store brings its topology: how a transaction reaches
the node of its key, how commands over many keys are pipelined, and its own
``update``, ``update_event`` and ``delete``. Key names differ in one point: the
cluster store wraps the part that must choose the slot in braces (a hash tag).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from risk_engine.errors import ConfigurationError, ProfileStoreError, StoreUnavailableError
from risk_engine.profiles.crowds import CROWD_MAX_AGE_DAYS, CROWD_MAX_USERS, crowd_day
from risk_engine.profiles.integrity import CorruptProfileError, Incidents
from risk_engine.profiles.model import BurstCounts, Profile
from risk_engine.profiles.store import BURST_MAX_ENTRIES, BURST_WINDOW_S, BurstNote, EventLabel

# One Redis command as redis-py packs it: the name, then the arguments.
Command = tuple[str | bytes | int | float, ...]

# Optimistic retries of one update before giving up on a hopelessly hot key.
WATCH_TRIES = 100
# Jittered back-off between retries: doubling from ~0.5 ms, at most 20 ms.
_BACKOFF_BASE_S = 0.0005
_BACKOFF_CAP_S = 0.02
_BURST_TTL_S = math.ceil(BURST_WINDOW_S)
# Entries are trimmed only once two windows older than the newest insert, so that an
# event recorded slightly out of order (a skewed clock) cannot trim entries that a
# query at an earlier ``now`` still counts.
_BURST_TRIM_AGE_S = 2 * BURST_WINDOW_S
# Profiles read per round trip by ``sealing_keys``.
_SCAN_BATCH = 500

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


class RedisLayout:
    """The key layout under ``prefix`` and every operation both Redis stores run alike."""

    # Cluster: the slot-choosing part of each key in braces.
    hash_tags: ClassVar[bool] = False
    # What a call may raise that means "the store failed" (the cluster adds its own).
    errors: ClassVar[tuple[type[Exception], ...]] = (RedisError,)

    def __init__(self, url: str, *, prefix: str, retention_days: float) -> None:
        self._safe_url = redact_url(url)
        if retention_days <= 0:
            raise ConfigurationError(
                f"profile retention must be positive, got {retention_days!r} days",
                field="retention_days",
            )
        self._prefix = prefix
        self._retention_s = math.ceil(retention_days * 86400.0)
        self.incidents = Incidents()
        self.watch_tries = WATCH_TRIES

    @property
    def prefix(self) -> str:
        return self._prefix

    # -- what each topology provides --------------------------------------------------

    @property
    def _reads(self) -> Any:
        """The client for commands on one key (``redis.Redis`` or ``RedisCluster``)."""
        raise NotImplementedError

    def _transaction(self, key: str) -> redis.client.Pipeline:
        """A MULTI/EXEC pipeline on the node that holds ``key``."""
        raise NotImplementedError

    def _pipelined(self, commands: Sequence[Command], action: str) -> list[Any]:
        """Run ``commands`` in one pipeline, not atomically; their replies."""
        raise NotImplementedError

    def _mget(self, names: list[bytes]) -> list[Any]:
        return list(self._reads.mget(names))

    def _moved(self) -> None:
        """A slot moved under a transaction (cluster only): learn the new slot map."""

    # -- profiles ---------------------------------------------------------------------

    def get(self, user_key: str) -> Profile | None:
        try:
            raw = self._reads.get(self._profile_key(user_key))
        except self.errors as exc:
            self._fail(exc, "get")
        return None if raw is None else loads_or_none(raw)

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
        with contextlib.suppress(*self.errors):  # the user starts afresh either way
            self._reads.set(self._quarantine_key(user_key), raw, ex=self._retention_s)
        self.incidents.note(
            "quarantined",
            "Redis profile store %s: a stored profile is corrupt (%s); kept at %s,"
            " the user starts afresh",
            self._safe_url,
            reason,
            self._quarantine_key(user_key),
        )

    def label_event(self, event_id: str, label: str) -> EventLabel | None:
        try:
            script = self._reads.register_script(_LABEL_SCRIPT)
            reply = script(keys=[self._event_key(event_id)], args=[label])
        except self.errors as exc:
            self._fail(exc, "label_event")
        if reply is None:
            return None
        user, kept, new = reply
        return EventLabel(_text(user), _text(kept), bool(new))

    def sealing_keys(self) -> dict[str, str]:
        """Every profile's ref and key, by SCAN and batched reads (linear; offline)."""
        keys: dict[str, str] = {}
        try:
            batch: list[bytes] = []
            for name in self._scan_profiles():
                batch.append(name)
                if len(batch) >= _SCAN_BATCH:
                    self._collect_keys(batch, keys)
                    batch = []
            self._collect_keys(batch, keys)
        except self.errors as exc:
            self._fail(exc, "sealing_keys")
        return keys

    def _collect_keys(self, names: list[bytes], keys: dict[str, str]) -> None:
        if not names:
            return
        for raw in self._mget(names):
            profile = None if raw is None else loads_or_none(raw)
            if profile is not None:
                keys[profile.ref] = profile.data_key

    def _scan_profiles(self) -> Iterable[bytes]:
        pattern = f"{_glob_escape(self._prefix)}:profile:*"
        names: Iterable[bytes] = self._reads.scan_iter(match=pattern, count=1000)
        return names

    # -- burst windows ----------------------------------------------------------------

    def burst_counts(self, ip_key: str, network: str, now: float) -> BurstCounts:
        windows = (self._burst_key("ip", ip_key), self._burst_key("net", network))
        ip_members, net_members = self._pipelined(window_reads(windows, now), "burst_counts")
        return BurstCounts(*tally(ip_members), *tally(net_members))

    def record_burst(
        self, ip_key: str, network: str, user_key: str, ts: float, failed: bool
    ) -> None:
        member = burst_member(user_key, ts, failed)
        windows = (self._burst_key("ip", ip_key), self._burst_key("net", network))
        self._pipelined([c for w in windows for c in note_burst(w, member, ts)], "record_burst")

    # -- crowds -----------------------------------------------------------------------

    def _crowd_read(self, network: str) -> Command:
        """The network's crowd: members (user keys) with their first day as score."""
        return ("ZRANGE", self._crowd_key(network), 0, -1, "WITHSCORES")

    def _crowd_notes(
        self, note: BurstNote, crowd: list[tuple[str, int]]
    ) -> tuple[list[Command], list[Command]]:
        """``Crowd.note`` as commands, from the members read before the event: those on
        the network's key, and those on the user's own list of crowds (for erasure)."""
        if not note.succeeded or any(user == note.user_key for user, _ in crowd):
            return [], []
        day = crowd_day(note.ts)
        start = day - CROWD_MAX_AGE_DAYS
        key = self._crowd_key(note.network)
        commands: list[Command] = []
        if any(first < start for _, first in crowd):
            commands.append(("ZREMRANGEBYSCORE", key, "-inf", f"({start}"))
        if sum(first >= start for _, first in crowd) >= CROWD_MAX_USERS:
            return commands, []
        commands += [("ZADD", key, "NX", day, note.user_key), ("EXPIRE", key, self._retention_s)]
        mine = self._user_crowds_key(note.user_key)
        return commands, [("SADD", mine, note.network), ("EXPIRE", mine, self._retention_s)]

    def _forget_crowds(self, user_key: str, networks: Iterable[bytes | str]) -> list[Command]:
        """Erasure: the user out of every crowd joined."""
        return [("ZREM", self._crowd_key(_text(n)), user_key) for n in networks]

    # -- challenges -------------------------------------------------------------------

    def save_challenge(self, challenge_id: str, record: bytes, ttl_s: float, now: float) -> None:
        key = self._challenge_key(challenge_id)
        try:
            pipe = self._transaction(key)
        except self.errors as exc:
            self._fail(exc, "save_challenge")
        try:
            pipe.delete(key)
            pipe.hset(key, mapping={"record": record, "expires_at": repr(now + ttl_s), "used": 0})
            # Redis forgets it by its own clock; ``expires_at`` decides by the caller's.
            pipe.pexpire(key, max(1, math.ceil(ttl_s * 1000.0)))
            pipe.execute()
        except MovedError as exc:
            self._moved()
            self._fail(exc, "save_challenge")
        except self.errors as exc:
            self._fail(exc, "save_challenge")
        finally:
            reset_quietly(pipe)

    def load_challenge(self, challenge_id: str, now: float) -> bytes | None:
        try:
            record, expires_at = self._reads.hmget(
                self._challenge_key(challenge_id), ["record", "expires_at"]
            )
        except self.errors as exc:
            self._fail(exc, "load_challenge")
        if record is None or expires_at is None or now >= float(expires_at):
            return None
        return record if isinstance(record, bytes) else str(record).encode()

    def claim_challenge(self, challenge_id: str, now: float) -> bool:
        try:
            script = self._reads.register_script(_CLAIM_SCRIPT)
            won = script(keys=[self._challenge_key(challenge_id)], args=[repr(now)])
        except self.errors as exc:
            self._fail(exc, "claim_challenge")
        return bool(won)

    # -- housekeeping -----------------------------------------------------------------

    def purge(self, older_than: float) -> int:
        """Nothing to do: profiles and challenges carry TTLs and Redis expires them."""
        return 0

    def count(self) -> int:
        """Profiles under this prefix, by SCAN (linear in the keyspace; for operators)."""
        try:
            return sum(1 for _ in self._scan_profiles())
        except self.errors as exc:
            self._fail(exc, "count")

    def ping(self) -> None:
        try:
            self._reads.ping()
        except self.errors as exc:
            self._fail(exc, "ping")

    def _fail(self, exc: Exception, action: str) -> NoReturn:
        what = f"Redis profile store {self._safe_url}: {action} failed: {type(exc).__name__}: {exc}"
        if isinstance(exc, RedisTimeoutError | RedisConnectionError):
            raise StoreUnavailableError(what, url=self._safe_url) from exc
        raise ProfileStoreError(what, url=self._safe_url) from exc

    def _lost_races(self, action: str) -> NoReturn:
        raise ProfileStoreError(
            f"Redis profile store {self._safe_url}: {action} of one profile lost "
            f"{self.watch_tries} races in a row to concurrent writers",
            url=self._safe_url,
        )

    # -- key names --------------------------------------------------------------------

    def _tag(self, value: str) -> str:
        return f"{{{value}}}" if self.hash_tags else value

    def _profile_key(self, user_key: str) -> str:
        return f"{self._prefix}:profile:{self._tag(user_key)}"

    def _user_events_key(self, user_key: str) -> str:
        return f"{self._prefix}:user-events:{self._tag(user_key)}"

    def _quarantine_key(self, user_key: str) -> str:
        return f"{self._prefix}:quarantine:{self._tag(user_key)}"

    def _crowd_key(self, network: str) -> str:
        return f"{self._prefix}:crowd:{self._tag(network)}"

    def _user_crowds_key(self, user_key: str) -> str:
        return f"{self._prefix}:user-crowds:{self._tag(user_key)}"

    def _burst_key(self, kind: str, value: str) -> str:
        return f"{self._prefix}:burst:{kind}:{self._tag(value)}"

    def _window_key(self, window: str) -> str:
        """A profile's window name (``ip:...``, ``net:...``) as this store's key."""
        kind, _, value = window.partition(":")
        return self._burst_key(kind, value)

    def _challenge_key(self, challenge_id: str) -> str:
        return f"{self._prefix}:challenge:{self._tag(challenge_id)}"

    def _event_key(self, event_id: str) -> str:
        return f"{self._prefix}:event:{self._tag(event_id)}"


def loads_or_none(raw: bytes | str) -> Profile | None:
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


def back_off(attempt: int) -> float:
    """Seconds to wait before optimistic retry ``attempt + 1``: jittered, doubling, capped."""
    return random.uniform(0.0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** min(attempt, 16)))


def burst_member(user_key: str, ts: float, failed: bool) -> str:
    """A burst window member ``ts:failed:nonce:user``."""
    # The nonce keeps two identical events distinct members of the set.
    return f"{ts!r}:{int(failed)}:{random.getrandbits(64):016x}:{user_key}"


def note_burst(key: str, member: str, ts: float) -> list[Command]:
    """What noting an event does to one window: add, trim by age and by rank, expire."""
    return [
        ("ZADD", key, ts, member),
        ("ZREMRANGEBYSCORE", key, "-inf", ts - _BURST_TRIM_AGE_S),
        # Keep the newest BURST_MAX_ENTRIES: bounded memory under a flood.
        ("ZREMRANGEBYRANK", key, 0, -(BURST_MAX_ENTRIES + 1)),
        ("EXPIRE", key, _BURST_TTL_S),
    ]


def window_reads(keys: Sequence[str], now: float) -> list[Command]:
    """The members of each window in (now - window, now], oldest first.

    "(" makes the lower bound exclusive: an entry exactly one window old is out.
    """
    start = f"({now - BURST_WINDOW_S!r}"
    return [("ZRANGEBYSCORE", key, start, now) for key in keys]


def tally(members: list[bytes]) -> tuple[int, int]:
    """Distinct users and failures among burst members ``ts:failed:nonce:user``."""
    users: set[bytes] = set()
    failures = 0
    for member in members:
        _, failed, _, user = member.split(b":", 3)
        users.add(user)
        failures += failed == b"1"
    return len(users), failures


def crowd_members(reply: Any) -> list[tuple[str, int]]:
    """(user key, first day) of a ``ZRANGE ... WITHSCORES`` reply, flat or in pairs."""
    if not reply:
        return []
    if isinstance(reply[0], (list, tuple)):
        pairs = [(member, score) for member, score in reply]
    else:
        pairs = list(zip(reply[::2], reply[1::2], strict=True))
    return [(_text(member), int(float(score))) for member, score in pairs]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    """``text`` as a literal inside a Redis MATCH pattern."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def reset_quietly(pipe: redis.client.Pipeline) -> None:
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
