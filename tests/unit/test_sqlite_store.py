"""SQLiteStore specifics: failures surface as ProfileStoreError, retention, pruning."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from risk_engine.errors import ConfigurationError, ProfileStoreError
from risk_engine.profiles import BurstCounts, BurstNote, Profile, SQLiteStore
from risk_engine.profiles import sqlite as sqlite_module
from risk_engine.profiles.store import BURST_WINDOW_S


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A direct connection to the store's file, to set up what the API cannot."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def stored_seen(path: Path, user_key: str) -> int | None:
    """n_seen of a profile row as committed in the file, read from outside the store."""
    with raw(path) as conn:
        row = conn.execute("SELECT data FROM profiles WHERE user_key = ?", (user_key,)).fetchone()
    return None if row is None else Profile.loads(row[0]).n_seen


def bump_seen(profile: Profile) -> None:
    profile.n_seen += 1


def test_corrupt_file_is_a_clear_profile_store_error(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    path.write_bytes(b"this is not a database, just garbage bytes\x00\xff" * 200)
    with pytest.raises(ProfileStoreError) as excinfo:
        SQLiteStore(path)
    assert not isinstance(excinfo.value, sqlite3.Error)
    message = str(excinfo.value)
    assert str(path) in message
    assert "not an SQLite database" in message
    assert isinstance(excinfo.value.__cause__, sqlite3.DatabaseError)


def test_profile_of_unknown_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    store = SQLiteStore(path)
    try:
        store.update("alice", bump_seen)
        future = {**Profile("alice").to_dict(), "version": 99}
        with raw(path) as conn:
            conn.execute(
                "UPDATE profiles SET data = ? WHERE user_key = ?", (orjson.dumps(future), "alice")
            )
        with pytest.raises(ProfileStoreError, match="version 99"):
            store.get("alice")
        with pytest.raises(ProfileStoreError, match="version 99"):
            store.update("alice", bump_seen)
        # The refused update rolled back: the store keeps working, the row is untouched.
        store.update("bob", bump_seen)
        with raw(path) as conn:
            (data,) = conn.execute("SELECT data FROM profiles WHERE user_key = 'alice'").fetchone()
        assert orjson.loads(data)["version"] == 99
    finally:
        store.close()


def test_lock_held_beyond_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    store = SQLiteStore(path, busy_timeout_s=0.05)
    try:
        with raw(path) as conn:
            conn.execute("BEGIN IMMEDIATE")
            with pytest.raises(ProfileStoreError, match="locked") as excinfo:
                store.update("alice", bump_seen)
            assert not isinstance(excinfo.value, sqlite3.Error)
            conn.execute("ROLLBACK")
        store.update("alice", bump_seen)
        stored = store.get("alice")
        assert stored is not None and stored.n_seen == 1
    finally:
        store.close()


def test_opens_in_wal_mode_and_creates_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "profiles.db"
    store = SQLiteStore(path)
    store.close()
    with raw(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_profiles_past_retention_read_as_absent(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    store = SQLiteStore(path, retention_days=1)
    try:
        store.update("old", bump_seen)
        store.update("recent", bump_seen)
        with raw(path) as conn:
            conn.execute(
                "UPDATE profiles SET updated_at = ? WHERE user_key = 'old'",
                (time.time() - 2 * 86400,),
            )
        assert store.get("old") is None
        assert store.count() == 1
        # The next update starts afresh rather than reviving the stale profile.
        store.update("old", bump_seen)
        stored = store.get("old")
        assert stored is not None and stored.n_seen == 1
    finally:
        store.close()


def test_purge_deletes_expired_challenges(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    store = SQLiteStore(path)
    try:
        now = time.time()
        store.save_challenge("expired", b"r", 60.0, now - 120)
        store.save_challenge("live", b"r", 60.0, now)
        assert store.purge(older_than=now - 3600) == 0
        with raw(path) as conn:
            ids = [row[0] for row in conn.execute("SELECT id FROM challenges")]
        assert ids == ["live"]
    finally:
        store.close()


def test_old_burst_rows_are_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_module, "_PRUNE_EVERY", 4)
    path = tmp_path / "profiles.db"
    # Every update committed at once, so that another connection sees it at once.
    store = SQLiteStore(path, commit_after_s=0)
    now = 1_700_000_000.0
    try:
        for i in range(3):
            store.record_burst("ipk", "net", f"old-{i}", now - 3 * BURST_WINDOW_S + i, False)
        store.record_burst("ipk", "net", "new", now, True)  # the 4th insert prunes
        with raw(path) as conn:
            users = {row[0] for row in conn.execute("SELECT user_key FROM bursts")}
        assert users == {"new"}
        counts = store.burst_counts("ipk", "net", now)
        assert (counts.ip_users, counts.ip_failures) == (1, 1)
    finally:
        store.close()


def test_close_releases_the_file_and_later_calls_fail_clearly(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    before = set(threading.enumerate())
    store = SQLiteStore(path)
    own_threads = set(threading.enumerate()) - before
    assert own_threads  # the checkpointer
    worker = threading.Thread(target=lambda: store.update("alice", bump_seen))
    worker.start()
    worker.join()
    assert Path(f"{path}-wal").exists()
    store.close()
    # SQLite removes the WAL file when the last connection to the file closes: so the
    # store's connection and its checkpointer's are both closed, and its thread gone.
    assert not Path(f"{path}-wal").exists()
    assert not any(thread.is_alive() for thread in own_threads)
    with pytest.raises(ProfileStoreError, match="closed"):
        store.get("alice")
    store.close()  # twice is harmless


def note(user: str, ts: float, ip: str = "ipk", failed: bool = False) -> BurstNote:
    return BurstNote(ip, "198.51.100.0/24", user, ts, failed)


def count_seen(profile: Profile, bursts: BurstCounts) -> tuple[int, BurstCounts]:
    profile.n_seen += 1
    return profile.n_seen, bursts


def test_two_stores_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    """Two worker processes share one file: neither may decide from a stale cache."""
    path = tmp_path / "profiles.db"
    # Committed per update, so that each sees the other's last write at once.
    first = SQLiteStore(path, commit_after_s=0)
    second = SQLiteStore(path, commit_after_s=0)
    now = 1_700_000_000.0
    try:
        assert first.update_event(note("alice", now), count_seen) == (1, BurstCounts())
        # The second store reads what the first committed, profile and bursts alike.
        assert second.update_event(note("bob", now + 1), count_seen) == (
            1,
            BurstCounts(1, 0, 1, 0),
        )
        assert second.update_event(note("alice", now + 2, failed=True), count_seen) == (
            2,
            BurstCounts(2, 0, 2, 0),
        )
        # The first has alice cached at n_seen=1 and the window without bob: both stale.
        assert first.update_event(note("alice", now + 3), count_seen) == (
            3,
            BurstCounts(2, 1, 2, 1),
        )
        assert first.burst_counts("ipk", "198.51.100.0/24", now + 4) == BurstCounts(2, 1, 2, 1)
        assert second.burst_counts("ipk", "198.51.100.0/24", now + 4) == BurstCounts(2, 1, 2, 1)
        stored = second.get("alice")
        assert stored is not None and stored.n_seen == 3
    finally:
        first.close()
        second.close()


def crowd_of(store: SQLiteStore, user: str, network: str, ts: float) -> tuple[int, int]:
    """A successful event of ``user`` on ``network``: the crowd counts it was scored with."""
    return store.update_event(
        BurstNote(f"ipk-{user}", network, user, ts, False, "", True),
        lambda profile, bursts: (bursts.crowd_users, bursts.crowd_days),
    )


def test_crowds_follow_the_other_store_and_erasure(tmp_path: Path) -> None:
    """A crowd one worker read must not outlive another worker's writes or an erasure."""
    path = tmp_path / "profiles.db"
    first = SQLiteStore(path, commit_after_s=0)
    second = SQLiteStore(path, commit_after_s=0)
    office, day = "203.0.113.0/24", 86400.0
    now = 19_700 * day + day / 2
    try:
        assert crowd_of(first, "ann", office, now) == (0, 0)
        assert crowd_of(second, "bob", office, now + day) == (1, 1)
        assert crowd_of(first, "cat", office, now + day) == (1, 1)
        # The second store has read the office's crowd before cat joined it.
        assert crowd_of(second, "dan", office, now + 2 * day) == (3, 2)
        assert crowd_of(first, "eve", office, now + 2 * day) == (3, 2)
        # Erased in one store: gone from both stores' counts at once.
        assert first.delete("ann")
        assert crowd_of(first, "fay", office, now + 3 * day) == (4, 2)
        assert crowd_of(second, "gus", office, now + 3 * day) == (4, 2)
        assert second.delete("bob")
        assert crowd_of(first, "hal", office, now + 4 * day) == (5, 3)
        assert crowd_of(second, "ivy", office, now + 4 * day) == (5, 3)
    finally:
        first.close()
        second.close()


def test_crowds_past_the_mirrors_bound_are_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "_MAX_CROWDS", 2)
    store = SQLiteStore(tmp_path / "profiles.db")
    day = 86400.0
    now = 19_700 * day + day / 2
    networks = [f"198.51.{k}.0/24" for k in range(5)]
    try:
        for network in networks:
            assert crowd_of(store, "ann", network, now) == (0, 0)
        for network in networks:
            assert crowd_of(store, "bob", network, now + day) == (1, 1)
            assert len(store._crowds) <= 2
        for network in networks:
            assert crowd_of(store, "cat", network, now + 2 * day) == (2, 2)
    finally:
        store.close()


def test_grouped_updates_are_committed_within_the_window(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    store = SQLiteStore(path, commit_after_s=0.02)
    try:
        for _ in range(3):
            store.update("alice", bump_seen)
        # Nobody updates any more: the maintenance thread commits the group itself.
        deadline = time.monotonic() + 5.0
        while stored_seen(path, "alice") != 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stored_seen(path, "alice") == 3
    finally:
        store.close()


def test_the_last_group_of_a_stream_is_committed_when_the_updates_stop(tmp_path: Path) -> None:
    # The maintenance thread follows the groups that updates commit, one after the
    # other, and still commits the one left open when they stop.
    path = tmp_path / "profiles.db"
    store = SQLiteStore(path, commit_after_s=0.01, commit_every=1000)
    try:
        until = time.monotonic() + 0.2
        count = 0
        while time.monotonic() < until or count < 50:
            store.update("alice", bump_seen)
            count += 1
            time.sleep(0.001)
        deadline = time.monotonic() + 5.0
        while stored_seen(path, "alice") != count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stored_seen(path, "alice") == count
    finally:
        store.close()


def test_close_commits_what_is_pending(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    store = SQLiteStore(path, commit_after_s=1.0, commit_every=1000)
    store.update("alice", bump_seen)
    store.close()
    assert stored_seen(path, "alice") == 1


def test_a_claim_is_committed_before_it_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    store = SQLiteStore(path, commit_after_s=1.0, commit_every=1000)
    other = SQLiteStore(path, commit_after_s=1.0, commit_every=1000)
    try:
        store.update("alice", bump_seen)
        store.save_challenge("ch-1", b"record", 60.0, time.time())
        assert store.claim_challenge("ch-1", time.time()) is True
        # Another worker process sees the claim at once (a replay there is refused),
        # and the update grouped before it.
        assert other.claim_challenge("ch-1", time.time()) is False
        assert other.load_challenge("ch-1", time.time()) == b"record"
        stored = other.get("alice")
        assert stored is not None and stored.n_seen == 1
    finally:
        store.close()
        other.close()


def test_a_failed_update_leaves_its_group_intact(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    store = SQLiteStore(path, commit_after_s=1.0, commit_every=1000)
    try:
        store.update("alice", bump_seen)

        def fail(profile: Profile) -> None:
            profile.n_seen = 99
            raise RuntimeError("no")

        with pytest.raises(RuntimeError):
            store.update("alice", fail)
        # The next update starts from the group's last write of alice, not from the 99.
        assert store.update("alice", lambda p: p.n_seen) == 1
        store.update("bob", bump_seen)
    finally:
        store.close()
    with raw(path) as conn:
        rows = dict(conn.execute("SELECT user_key, data FROM profiles").fetchall())
    assert {user: Profile.loads(data).n_seen for user, data in rows.items()} == {
        "alice": 1,
        "bob": 1,
    }


@pytest.mark.parametrize(
    ("after_s", "every"), [(-0.1, 10), (2.0, 10), (0.005, 0)], ids=["negative", "long", "zero"]
)
def test_bad_group_commit_settings_are_refused(tmp_path: Path, after_s: float, every: int) -> None:
    with pytest.raises(ConfigurationError, match="group commit"):
        SQLiteStore(tmp_path / "profiles.db", commit_after_s=after_s, commit_every=every)


def test_an_outside_write_is_seen_at_once(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    store = SQLiteStore(path)
    try:
        store.update("alice", bump_seen)
        with raw(path) as conn:
            conn.execute(
                "UPDATE profiles SET data = ? WHERE user_key = 'alice'",
                (Profile("alice", n_seen=41).dumps(),),
            )
        assert store.update("alice", lambda p: (bump_seen(p), p.n_seen)[1]) == 42
    finally:
        store.close()


@pytest.mark.parametrize("cache_profiles", [0, 1, 4096])
def test_the_cache_changes_no_result(tmp_path: Path, cache_profiles: int) -> None:
    store = SQLiteStore(tmp_path / "profiles.db", cache_profiles=cache_profiles)
    now = 1_700_000_000.0
    try:
        results = [
            store.update_event(note(f"u{i % 3}", now + i, ip=f"ip{i % 2}"), count_seen)
            for i in range(12)
        ]
        store.delete("u0")
        results.append(store.update_event(note("u0", now + 20, ip="ip0"), count_seen))
        assert [seen for seen, _ in results] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 1]
        # ip0 saw u0, u2 and u1 (even i), the network all three; u0's entries went
        # with its erasure, from the rows and the mirrored windows alike.
        assert results[-1][1] == BurstCounts(2, 0, 2, 0)
    finally:
        store.close()


def test_purge_empties_the_cache(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "profiles.db")
    try:
        store.update("alice", bump_seen)
        assert store.purge(older_than=time.time() + 1) == 1
        # Served from a stale cache, this would be 2.
        assert store.update("alice", lambda p: (bump_seen(p), p.n_seen)[1]) == 1
    finally:
        store.close()


def test_negative_cache_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cache"):
        SQLiteStore(tmp_path / "profiles.db", cache_profiles=-1)


@pytest.mark.parametrize("every_s", [0.05, None])
def test_the_background_thread_checkpoints_the_wal(tmp_path: Path, every_s: float | None) -> None:
    path = tmp_path / "profiles.db"
    store = SQLiteStore(path, checkpoint_every_s=every_s)
    try:
        before = path.stat().st_size
        # Random, so that the stored form's compression cannot shrink it.
        blob = os.urandom(2000).hex()
        for i in range(100):
            store.update(f"user-{i}", lambda p: p.pending.update(pad={"blob": blob}))
        # Until a checkpoint copies them, the 200 KB of profiles live in the WAL only.
        deadline = time.monotonic() + (10.0 if every_s else 0.5)
        while path.stat().st_size < before + 100_000 and time.monotonic() < deadline:
            time.sleep(0.02)
        copied = path.stat().st_size >= before + 100_000
        assert copied is (every_s is not None)
    finally:
        store.close()


@pytest.mark.parametrize("path", ["", ":memory:"])
def test_in_memory_sqlite_is_refused(path: str) -> None:
    # One connection per thread would mean one private database per thread.
    with pytest.raises(ConfigurationError, match="memory://"):
        SQLiteStore(path)


def test_an_erased_users_bytes_are_gone_from_the_file_and_the_wal(tmp_path: Path) -> None:
    # No maintenance thread: only the erasure itself may clean the WAL up.
    path = tmp_path / "profiles.db"
    store = SQLiteStore(path, checkpoint_every_s=None, commit_after_s=0)
    victim, other = "victimkey0123456", "otherkey98765432"
    try:
        # Set by the store, not left to the build's default (some ship it off).
        with store._locked("test") as conn:
            assert conn.execute("PRAGMA secure_delete").fetchone() == (1,)
        for i in range(30):
            store.update_event(note(victim, 1_700_000_000.0 + i, ip=f"ip{i % 3}"), count_seen)
            store.update_event(note(other, 1_700_000_000.5 + i, ip=f"ip{i % 3}"), count_seen)
        stored = store.get(victim)
        assert stored is not None
        assert store.delete(victim) is True
        files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
        assert "profiles.db" in files
        found = [
            f"{needle!r} in {name}"
            for name, data in files.items()
            for needle in (victim.encode(), stored.ref.encode(), stored.data_key.encode())
            if needle in data
        ]
        assert found == []
        assert store.get(other) is not None
    finally:
        store.close()


def corrupt_overflow_pages(path: Path, user_key: str) -> int:
    """Point every overflow page of the user's row past the end of the file; how many.

    An overflow page starts with the number of the next one (a b-tree page with its
    type, never 0), then a run of the row's bytes: reading or rewriting the row then
    fails with SQLITE_CORRUPT.
    """
    with raw(path) as conn:
        (row,) = conn.execute(
            "SELECT data FROM profiles WHERE user_key = ?", (user_key,)
        ).fetchone()
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    hits = 0
    for start in range(page_size, len(data), page_size):
        page = data[start : start + page_size]
        if page[0] == 0 and page[4:68] in row:
            data[start : start + 4] = b"\xff\xff\xff\xff"
            hits += 1
    path.write_bytes(bytes(data))
    return hits


def test_a_failing_statement_loses_no_other_users_acknowledged_update(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    others = [f"user-{i}" for i in range(9)]
    store = SQLiteStore(path, checkpoint_every_s=None)

    def fatten(profile: Profile) -> None:
        # Some 20 KB: the row spills into a chain of overflow pages.
        for _ in range(200):
            # Random, so that the stored form's compression cannot shrink it.
            profile.ips[f"victim-{os.urandom(40).hex()}"] = [1.0, 0.0]

    store.update("victim", fatten)
    for user in others:
        store.update(user, bump_seen)
    store.close()
    assert corrupt_overflow_pages(path, "victim") >= 2

    store = SQLiteStore(path, checkpoint_every_s=None, commit_after_s=1.0, commit_every=1000)
    try:
        for user in others:
            store.update(user, bump_seen)  # answered: acknowledged
        with pytest.raises(ProfileStoreError, match="corrupt"):
            store.update("victim", bump_seen)
        store.update("late", bump_seen)
    finally:
        store.close()
    assert {user: stored_seen(path, user) for user in [*others, "late"]} == dict.fromkeys(
        others, 2
    ) | {"late": 1}


def test_a_changed_digit_is_quarantined_and_the_user_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    store = SQLiteStore(path, commit_after_s=0)
    incidents: list[str] = []
    store.incidents.listen(incidents.append)
    try:
        for _ in range(119):
            store.update("alice", bump_seen)
        store.update("bob", bump_seen)
        with raw(path) as conn:
            (data,) = conn.execute("SELECT data FROM profiles WHERE user_key = 'alice'").fetchone()
            # One bit of the last byte flipped: a different history if it were read.
            damaged = bytes(data)[:-1] + bytes([data[-1] ^ 0x01])
            assert damaged != data
            conn.execute("UPDATE profiles SET data = ? WHERE user_key = 'alice'", (damaged,))
        # Not read as a history of 921 events: set aside, and alice starts afresh.
        assert store.get("alice") is None
        assert store.update("alice", lambda p: p.n_seen) == 0
        assert incidents == ["quarantined"]
        assert store.update("bob", lambda p: p.n_seen) == 1
    finally:
        store.close()
    assert stored_seen(path, "alice") == 0
    with raw(path) as conn:
        kept = conn.execute("SELECT user_key, data FROM quarantine").fetchall()
    assert kept == [("alice", damaged)]


def test_profiles_stored_before_the_checksum_still_read(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    store = SQLiteStore(path)
    try:
        store.update("alice", bump_seen)
        with raw(path) as conn:
            plain = Profile("alice", n_seen=41).dumps()
            conn.execute("UPDATE profiles SET data = ? WHERE user_key = 'alice'", (plain,))
        assert store.update("alice", lambda p: p.n_seen) == 41
    finally:
        store.close()
