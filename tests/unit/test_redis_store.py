"""RedisStore specifics: update_event's round trips, its retries and its connection hygiene."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis
from redis.connection import Connection

from risk_engine.errors import ProfileStoreError
from risk_engine.profiles import BurstCounts, BurstNote, Profile, RedisStore
from risk_engine.profiles.store import BURST_WINDOW_S

NOW = 1_700_000_000.0
IP, NET = "ipk-1", "203.0.113.0/24"


class Boom(Exception):
    """Raised by a test's update function."""


@pytest.fixture
def store(redis_url: str, redis_prefix: str) -> Iterator[RedisStore]:
    backend = RedisStore(redis_url, prefix=redis_prefix)
    yield backend
    backend.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A connection of the test's own, for writes that the store must notice."""
    direct = redis.Redis.from_url(redis_url)
    yield direct
    direct.close()


def note(user: str, ts: float = NOW, *, failed: bool = False, ip: str = IP) -> BurstNote:
    return BurstNote(ip, NET, user, ts, failed)


def increment(profile: Profile, bursts: BurstCounts | None = None) -> int:
    profile.n_seen += 1
    return profile.n_seen


def large(user: str) -> Profile:
    """A profile of about 8 KB stored: more than redis-py packs into one buffer."""
    profile = Profile(user)
    for i in range(16):
        # Random, so that the stored form's compression cannot shrink it.
        profile.pending[f"evt-{i}"] = {"device_key": f"dev-{i}", "blob": os.urandom(480).hex()}
    assert len(profile.stored()) > 7000
    return profile


class Wire:
    """Counts socket writes and replies read on every redis-py connection of the process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.writes: list[int] = []  # buffers per write
        self.replies = 0
        send, read = Connection.send_packed_command, Connection.read_response

        def counting_send(conn: Connection, command: Any, check_health: bool = True) -> None:
            self.writes.append(len(command))
            send(conn, command, check_health)  # type: ignore[no-untyped-call]

        def counting_read(conn: Connection, *args: Any, **kwargs: Any) -> Any:
            self.replies += 1
            return read(conn, *args, **kwargs)

        monkeypatch.setattr(Connection, "send_packed_command", counting_send)
        monkeypatch.setattr(Connection, "read_response", counting_read)

    def reset(self) -> None:
        self.writes.clear()
        self.replies = 0


def test_uncontended_update_event_is_two_round_trips(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.update("alice", lambda profile: None)
    profile = large("alice")
    store.update_event(note("alice", NOW - 10), lambda p, b: p.pending.update(profile.pending))
    wire = Wire(monkeypatch)
    # The old composition: burst_counts, then update (WATCH, GET, MULTI..EXEC), then
    # record_burst.
    bursts = store.burst_counts(IP, NET, NOW)
    store.update("alice", increment)
    store.record_burst(IP, NET, "alice", NOW, False)
    assert len(wire.writes) == 5
    assert bursts == BurstCounts(1, 0, 1, 0)

    wire.reset()
    seen = store.update_event(note("bob", NOW + 1), lambda p, b: b)
    assert seen == BurstCounts(1, 0, 1, 0)
    # One write of WATCH, GET, two window reads and the crowd's read; one of MULTI,
    # SET, 2 x 4 burst commands and EXEC; each write a single buffer, although the
    # profile is > 6 KB.
    wire.reset()
    assert store.update_event(note("alice", NOW + 2), increment) == 2
    assert wire.writes == [1, 1]
    assert wire.replies == 5 + 11
    stored = store.get("alice")
    assert stored is not None and stored.pending == profile.pending


def test_update_event_writes_what_record_burst_writes(
    store: RedisStore, client: redis.Redis, redis_prefix: str
) -> None:
    store.update_event(note("alice", NOW, failed=True), increment)
    store.record_burst(IP, NET, "bob", NOW + 1, False)
    for kind, value in (("ip", IP), ("net", NET)):
        key = f"{redis_prefix}:burst:{kind}:{value}"
        members = cast(list[tuple[bytes, float]], client.zrange(key, 0, -1, withscores=True))
        assert [score for _, score in members] == [NOW, NOW + 1]
        assert re.fullmatch(rb"1700000000\.0:1:[0-9a-f]{16}:alice", members[0][0])
        assert re.fullmatch(rb"1700000001\.0:0:[0-9a-f]{16}:bob", members[1][0])
        assert 0 < client.ttl(key) <= BURST_WINDOW_S
    assert client.ttl(f"{redis_prefix}:profile:alice") > 179 * 86400
    assert store.burst_counts(IP, NET, NOW + 2) == BurstCounts(2, 1, 2, 1)


def test_an_update_between_read_and_exec_makes_update_event_run_again(
    store: RedisStore, redis_prefix: str, client: redis.Redis
) -> None:
    seen: list[tuple[int, BurstCounts]] = []
    store.record_burst(IP, NET, "carol", NOW - 5, True)

    def step(profile: Profile, bursts: BurstCounts) -> int:
        seen.append((profile.n_seen, bursts))
        if len(seen) == 1:
            # Another writer commits while this event is between its reads and EXEC.
            store.update("alice", lambda p: setattr(p, "n_seen", 41))
            store.record_burst("ipk-2", NET, "dave", NOW - 1, False)
        return increment(profile)

    assert store.update_event(note("alice"), step) == 42
    # The second run saw the other writer's profile and fresh counts.
    assert seen == [(0, BurstCounts(1, 1, 1, 1)), (41, BurstCounts(1, 1, 2, 1))]
    stored = store.get("alice")
    assert stored is not None and stored.n_seen == 42
    # Noted once, by the run that committed.
    assert client.zcard(f"{redis_prefix}:burst:ip:{IP}") == 2


def test_update_event_between_an_updates_read_and_exec_makes_update_run_again(
    store: RedisStore,
) -> None:
    seen: list[int] = []

    def bump(profile: Profile) -> None:
        seen.append(profile.n_seen)
        if len(seen) == 1:
            store.update_event(note("alice"), increment)
        profile.n_seen += 10

    store.update("alice", bump)
    assert seen == [0, 1]
    stored = store.get("alice")
    assert stored is not None and stored.n_seen == 11


def test_update_event_retries_are_bounded_and_note_nothing(
    store: RedisStore,
    client: redis.Redis,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store.watch_tries = 3
    runs = 0

    def overtaken(profile: Profile, bursts: BurstCounts) -> None:
        nonlocal runs
        runs += 1
        client.set(f"{redis_prefix}:profile:alice", Profile("alice", n_seen=100 + runs).dumps())
        profile.n_seen = -1

    with pytest.raises(ProfileStoreError, match="update_event of one profile lost 3 races"):
        store.update_event(note("alice"), overtaken)
    assert runs == 3
    stored = store.get("alice")
    assert stored is not None and stored.n_seen == 103
    assert store.burst_counts(IP, NET, NOW + 1) == BurstCounts()


def test_fn_raising_unwatches_and_keeps_the_connection(
    store: RedisStore, client: redis.Redis, redis_prefix: str
) -> None:
    store.update_event(note("alice", NOW - 5), increment)
    # Single-threaded, the pool hands out the same connection every time.
    connection_id = store._client.client_id()
    error = Boom("no")

    def fail(profile: Profile, bursts: BurstCounts) -> None:
        profile.n_seen = 99
        raise error

    with pytest.raises(Boom) as excinfo:
        store.update_event(note("alice", NOW - 1, failed=True), fail)
    assert excinfo.value is error
    # A WATCH left on the pooled connection would abort its next transaction now
    # that the profile changes; and UNWATCH kept the connection, no reconnect.
    client.set(f"{redis_prefix}:profile:alice", Profile("alice", n_seen=7).dumps())
    store.save_challenge("ch", b"record", 60.0, time.time())
    assert store.update_event(note("bob"), lambda p, bursts: bursts) == BurstCounts(1, 0, 1, 0)
    assert store._client.client_id() == connection_id
    assert store.load_challenge("ch", time.time()) == b"record"


def test_reconnect_between_watch_and_exec_is_a_lost_race_not_a_lost_update(
    store: RedisStore,
) -> None:
    runs = 0

    def step(profile: Profile, bursts: BurstCounts) -> int:
        nonlocal runs
        runs += 1
        if runs == 1:
            store.update("alice", lambda p: setattr(p, "n_seen", 41))
            # Drops every connection, the one watching too (as close() from another
            # thread would): sent on a fresh socket, this EXEC would commit unwatched.
            store.close()
        return increment(profile)

    assert store.update_event(note("alice"), step) == 42
    assert runs == 2
    stored = store.get("alice")
    assert stored is not None and stored.n_seen == 42
    # The refusal lasts only from WATCH to EXEC: after the call, reconnecting is fine.
    store.close()
    assert store.get("alice") == stored
    store.close()
    assert store.update_event(note("alice", NOW + 1), increment) == 43


def test_connection_lost_after_the_read_fails_without_running_fn_again(
    redis_url: str, redis_prefix: str, client: redis.Redis
) -> None:
    name = f"risk-engine-test-{uuid.uuid4().hex[:12]}"
    separator = "&" if "?" in redis_url else "?"
    store = RedisStore(f"{redis_url}{separator}client_name={name}", prefix=redis_prefix)
    runs = 0

    def killed(profile: Profile, bursts: BurstCounts) -> int:
        nonlocal runs
        runs += 1
        (mine,) = [c for c in client.client_list() if c["name"] == name]
        client.client_kill_filter(_id=mine["id"])
        return increment(profile)

    try:
        store.update_event(note("alice", NOW - 5), increment)
        with pytest.raises(ProfileStoreError, match="update_event failed: ConnectionError"):
            store.update_event(note("alice"), killed)
        # Whether EXEC ran is unknown to the store: it fails rather than run fn again.
        assert runs == 1
        # Here it never reached Redis; and the next call works on a new connection.
        assert store.update_event(note("bob", NOW + 1), lambda p, b: b) == BurstCounts(1, 0, 1, 0)
        stored = store.get("alice")
        assert stored is not None and stored.n_seen == 1
    finally:
        store.close()


def test_redis_error_in_update_event_is_a_profile_store_error(
    store: RedisStore, client: redis.Redis, redis_prefix: str
) -> None:
    store.update_event(note("alice", NOW - 5), increment)
    client.set(f"{redis_prefix}:burst:ip:{IP}", b"not a sorted set")
    runs = 0

    def step(profile: Profile, bursts: BurstCounts) -> int:
        nonlocal runs
        runs += 1
        return increment(profile)

    with pytest.raises(ProfileStoreError, match="update_event failed: ResponseError: WRONGTYPE"):
        store.update_event(note("alice"), step)
    assert runs == 0
    stored = store.get("alice")
    assert stored is not None and stored.n_seen == 1
    client.delete(f"{redis_prefix}:burst:ip:{IP}")
    # The connection left with replies unread was dropped, not handed out again.
    assert store.update_event(note("alice"), step) == 2


def test_threads_mixing_update_and_update_event_lose_nothing(store: RedisStore) -> None:
    threads, calls = 8, 30
    barrier = threading.Barrier(threads)
    results: list[int] = []
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            barrier.wait()
            for i in range(calls):
                if (worker + i) % 2:
                    results.append(store.update("hot", increment))
                else:
                    ts = NOW + worker * calls + i
                    results.append(store.update_event(note("hot", ts, failed=True), increment))
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert errors == []
    total = threads * calls
    # Every committed run saw the one before it, whichever method made it.
    assert sorted(results) == list(range(1, total + 1))
    stored = store.get("hot")
    assert stored is not None and stored.n_seen == total
    # Each update_event noted its event exactly once.
    assert store.burst_counts(IP, NET, NOW + total + 1) == BurstCounts(1, total // 2, 1, total // 2)


def test_a_changed_digit_is_quarantined_and_the_user_starts_afresh(
    store: RedisStore, client: redis.Redis, redis_prefix: str
) -> None:
    incidents: list[str] = []
    store.incidents.listen(incidents.append)
    key = f"{redis_prefix}:profile:alice"
    client.set(key, Profile("alice", n_seen=119).stored())
    stored = cast(bytes, client.get(key))
    damaged = stored[:-1] + bytes([stored[-1] ^ 0x01])
    client.set(key, damaged)
    assert store.get("alice") is None
    assert (
        store.update_event(BurstNote("ip", "net", "alice", 1.0, False), lambda p, b: p.n_seen) == 0
    )
    assert incidents == ["quarantined"]
    assert client.get(f"{redis_prefix}:quarantine:alice") == damaged
    assert Profile.loads(cast(bytes, client.get(key))).n_seen == 0
