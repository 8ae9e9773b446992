"""The networks' crowds (profiles.crowds), checked identically on every store backend."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import redis

from risk_engine.profiles import MemoryStore, ProfileStore, RedisStore, SQLiteStore
from risk_engine.profiles.crowds import CROWD_MAX_AGE_DAYS, CROWD_MAX_USERS, CrowdTable
from risk_engine.profiles.model import BurstCounts, Profile
from risk_engine.profiles.redis_cluster import RedisClusterStore
from risk_engine.profiles.store import BurstNote

DAY = 86400.0
# Noon of a UTC day, so that an event and its day are never on a boundary.
DAY0 = 19_700 * DAY + DAY / 2
OFFICE = "203.0.113.0/24"


def succeed(store: ProfileStore, user: str, network: str, ts: float) -> tuple[int, int]:
    """A successful event of ``user`` on ``network``: the crowd counts it was scored with."""

    def step(profile: Profile, bursts: BurstCounts) -> tuple[int, int]:
        profile.n_seen += 1
        return bursts.crowd_users, bursts.crowd_days

    return store.update_event(BurstNote(f"ipk-{user}", network, user, ts, False, "", True), step)


def fail(store: ProfileStore, user: str, network: str, ts: float) -> tuple[int, int]:
    """A failed login: counted against the crowd, never a member of it."""

    def step(profile: Profile, bursts: BurstCounts) -> tuple[int, int]:
        return bursts.crowd_users, bursts.crowd_days

    return store.update_event(BurstNote(f"ipk-{user}", network, user, ts, True, "", False), step)


def test_a_crowd_is_other_users_from_earlier_days(store: ProfileStore) -> None:
    assert succeed(store, "a", OFFICE, DAY0) == (0, 0)
    succeed(store, "a", OFFICE, DAY0 + 60)
    succeed(store, "b", OFFICE, DAY0 + 120)
    # The same day's users are no crowd yet (a stuffing burst makes none).
    assert succeed(store, "c", OFFICE, DAY0 + 180) == (0, 0)
    assert fail(store, "x", OFFICE, DAY0 + DAY) == (3, 1)
    assert succeed(store, "d", OFFICE, DAY0 + DAY) == (3, 1)
    # A user never counts in the crowd it is scored against; failures join no crowd.
    assert succeed(store, "a", OFFICE, DAY0 + 2 * DAY) == (3, 2)
    assert succeed(store, "newcomer", OFFICE, DAY0 + 2 * DAY) == (4, 2)
    # Another network has a crowd of its own.
    assert succeed(store, "a", "198.51.100.0/24", DAY0 + 2 * DAY) == (0, 0)


def test_a_crowd_is_capped_and_ages(store: ProfileStore) -> None:
    for i in range(CROWD_MAX_USERS + 5):
        succeed(store, f"u{i}", OFFICE, DAY0 + i)
    assert succeed(store, "late", OFFICE, DAY0 + DAY) == (CROWD_MAX_USERS, 1)
    # Past the age limit nobody counts, and a newcomer is kept again.
    later = DAY0 + (CROWD_MAX_AGE_DAYS + 1) * DAY
    assert succeed(store, "after", OFFICE, later) == (0, 0)
    assert succeed(store, "next", OFFICE, later + DAY) == (1, 1)


def test_erasure_leaves_no_trace_in_any_crowd(store: ProfileStore, tmp_path: Path) -> None:
    for network in (OFFICE, "198.51.100.0/24"):
        succeed(store, "victim", network, DAY0)
        succeed(store, "other", network, DAY0 + 60)
    assert succeed(store, "probe", OFFICE, DAY0 + DAY) == (2, 1)
    assert store.delete("victim") is True
    assert succeed(store, "probe", OFFICE, DAY0 + 2 * DAY) == (1, 1)
    assert succeed(store, "probe2", "198.51.100.0/24", DAY0 + 2 * DAY) == (1, 1)
    assert not _mentions(store, "victim")
    assert _mentions(store, "other")


def test_every_backend_counts_the_same_crowds(store: ProfileStore) -> None:
    rng = random.Random(7)
    reference = MemoryStore()
    for i in range(300):
        user, network = f"u{rng.randrange(40)}", f"net-{rng.randrange(4)}"
        ts = DAY0 + i * 3600.0 * rng.uniform(0.5, 2.0) / 4
        if rng.random() < 0.8:
            assert succeed(store, user, network, ts) == succeed(reference, user, network, ts)
        else:
            assert fail(store, user, network, ts) == fail(reference, user, network, ts)
        if i % 97 == 96:
            assert store.delete(user) == reference.delete(user)


def test_the_table_forgets_a_user_everywhere() -> None:
    table = CrowdTable()
    for network in ("n1", "n2", "n3"):
        table.note(network, "gone", DAY0)
        table.note(network, "kept", DAY0)
    table.forget("gone")
    assert all(table.users_of(n) == {"kept"} for n in ("n1", "n2", "n3"))
    assert table.counts("n1", "probe", DAY0 + DAY) == (1, 1)


def test_a_full_table_forgets_what_no_longer_counts_then_lone_users() -> None:
    table = CrowdTable(max_keys=3)
    table.note("old", "a", DAY0)
    table.note("busy", "a", DAY0 + 50 * DAY)
    table.note("busy", "b", DAY0 + 50 * DAY)
    table.note("lone", "c", DAY0 + 50 * DAY)
    later = DAY0 + (CROWD_MAX_AGE_DAYS + 1) * DAY
    # Full: the aged membership goes first, and nothing that still counts.
    table.note("new", "d", later)
    assert [table.users_of(n) for n in ("old", "busy", "lone", "new")] == [
        set(),
        {"a", "b"},
        {"c"},
        {"d"},
    ]
    # Still full: the networks of a single user go, never a crowd.
    table.note("newer", "e", later)
    assert [table.users_of(n) for n in ("busy", "lone", "new", "newer")] == [
        {"a", "b"},
        set(),
        set(),
        {"e"},
    ]
    table.forget("c")
    assert table.counts("busy", "probe", later) == (2, 1)


def _mentions(store: ProfileStore, user: str) -> bool:
    """Whether the store still holds ``user`` anywhere a crowd keeps users."""
    if isinstance(store, MemoryStore):
        tables = store._crowds
        return any(user in tables.users_of(n) for n in list(tables._crowds)) or (
            user in tables._of_user
        )
    if isinstance(store, SQLiteStore):
        conn = sqlite3.connect(store.path)
        try:
            rows = conn.execute("SELECT COUNT(*) FROM crowds WHERE user_key = ?", (user,))
            return bool(rows.fetchone()[0])
        finally:
            conn.close()
    assert isinstance(store, (RedisStore, RedisClusterStore))
    client: redis.Redis | redis.RedisCluster = store._reads
    for key in client.scan_iter(match=f"{store.prefix}:*crowd*", count=1000):
        if user.encode() in key:
            return True
        kind = client.type(key)
        members = client.zrange(key, 0, -1) if kind == b"zset" else client.smembers(key)
        if user.encode() in members:
            return True
    return False
