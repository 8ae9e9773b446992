"""SQLiteStore specifics: failures surface as ProfileStoreError, retention, pruning."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from risk_engine.errors import ConfigurationError, ProfileStoreError
from risk_engine.profiles import Profile, SQLiteStore
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
    store = SQLiteStore(path)
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


def test_close_reaches_connections_of_other_threads(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    store = SQLiteStore(path)
    opened, release = threading.Event(), threading.Event()

    def work() -> None:
        store.update("alice", bump_seen)  # opens this thread's own connection
        opened.set()
        release.wait(10)

    worker = threading.Thread(target=work)
    worker.start()
    try:
        assert opened.wait(10)
        assert Path(f"{path}-wal").exists()
        store.close()
        # SQLite removes the WAL file when the last connection to the file closes:
        # so the live worker's connection was closed too.
        assert not Path(f"{path}-wal").exists()
    finally:
        release.set()
        worker.join()
    with pytest.raises(ProfileStoreError, match="closed"):
        store.get("alice")


@pytest.mark.parametrize("path", ["", ":memory:"])
def test_in_memory_sqlite_is_refused(path: str) -> None:
    # One connection per thread would mean one private database per thread.
    with pytest.raises(ConfigurationError, match="memory://"):
        SQLiteStore(path)
