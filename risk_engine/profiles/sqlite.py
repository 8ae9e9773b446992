"""SQLite profile store: the embedded default, safe across threads and processes.

One connection per thread, since an SQLite connection must not be used by two
threads at once. WAL lets readers run beside the single writer, and
``synchronous=NORMAL`` skips the fsync per commit: a process crash loses
nothing, a power cut may lose the last few updates, which a profile can afford.
Statements are plain SQL strings that ``sqlite3`` prepares once per connection
and caches, so a read-modify-write costs a few tens of microseconds.

Retention matches Redis: a profile not written for ``retention_days`` reads as
absent (and is overwritten by the next update); ``purge`` reclaims the rows.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

from risk_engine.errors import ConfigurationError, ProfileStoreError
from risk_engine.profiles.model import BurstCounts, Profile
from risk_engine.profiles.store import BURST_MAX_ENTRIES, BURST_WINDOW_S

T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS profiles ("
    " user_key TEXT PRIMARY KEY, data BLOB NOT NULL, updated_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bursts ("
    " key TEXT NOT NULL, ts REAL NOT NULL, user_key TEXT NOT NULL, failed INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS bursts_key_ts ON bursts (key, ts)",
    "CREATE TABLE IF NOT EXISTS challenges ("
    " id TEXT PRIMARY KEY, record BLOB NOT NULL, expires_at REAL NOT NULL,"
    " used INTEGER NOT NULL DEFAULT 0)",
)

_SELECT_PROFILE = "SELECT data FROM profiles WHERE user_key = ? AND updated_at >= ?"
_UPSERT_PROFILE = (
    "INSERT INTO profiles (user_key, data, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (user_key) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at"
)
_DELETE_PROFILE = "DELETE FROM profiles WHERE user_key = ?"
_COUNT_PROFILES = "SELECT COUNT(*) FROM profiles WHERE updated_at >= ?"
_PURGE_PROFILES = "DELETE FROM profiles WHERE updated_at < ?"

_INSERT_BURSTS = "INSERT INTO bursts (key, ts, user_key, failed) VALUES (?, ?, ?, ?), (?, ?, ?, ?)"
# Only the newest BURST_MAX_ENTRIES per key count, as in the in-memory window: this
# also bounds the work of one lookup under a credential-stuffing flood.
_BURST_COUNTS = (
    "SELECT COUNT(DISTINCT user_key), COALESCE(SUM(failed), 0) FROM ("
    " SELECT user_key, failed FROM bursts WHERE key = ? AND ts > ? AND ts <= ?"
    f" ORDER BY ts DESC LIMIT {BURST_MAX_ENTRIES})"
)
# Rows arrive in roughly increasing ts, so rowid order is time order: deleting every
# row before the first live one costs a walk over the expired head only, with no
# index on ts to maintain. A late out-of-order row merely waits for the next prune.
_PRUNE_BURSTS = (
    "DELETE FROM bursts WHERE rowid < COALESCE("
    " (SELECT rowid FROM bursts WHERE ts > ? ORDER BY rowid LIMIT 1),"
    " (SELECT MAX(rowid) + 1 FROM bursts))"
)
# The thorough (full-scan) prune, for ``purge`` only.
_PURGE_BURSTS = "DELETE FROM bursts WHERE ts <= (SELECT MAX(ts) FROM bursts) - ?"

_SAVE_CHALLENGE = (
    "INSERT INTO challenges (id, record, expires_at, used) VALUES (?, ?, ?, 0)"
    " ON CONFLICT (id) DO UPDATE SET"
    " record = excluded.record, expires_at = excluded.expires_at, used = 0"
)
_LOAD_CHALLENGE = "SELECT record FROM challenges WHERE id = ? AND expires_at > ?"
# One statement, hence one write transaction: of concurrent claims only one matches.
_CLAIM_CHALLENGE = "UPDATE challenges SET used = 1 WHERE id = ? AND used = 0 AND expires_at > ?"
_PURGE_CHALLENGES = "DELETE FROM challenges WHERE expires_at <= ?"

# Burst rows inserted (per store object) between two prunes of the expired head.
_PRUNE_EVERY = 1024
# Rows go once two windows older than the newest one, so that an event recorded
# slightly out of order (a skewed clock) cannot prune rows that a query at an
# earlier ``now`` still counts. Counting filters by ts, so this costs no accuracy.
_PRUNE_AGE_S = 2 * BURST_WINDOW_S

# sqlite3 result-code prefixes (extended codes share them) and what they mean to an operator.
_REASONS = (
    ("SQLITE_BUSY", "the database stayed locked by another writer beyond the busy timeout"),
    ("SQLITE_LOCKED", "the database stayed locked by another writer beyond the busy timeout"),
    ("SQLITE_NOTADB", "the file is not an SQLite database (corrupt or foreign file)"),
    ("SQLITE_CORRUPT", "the database file is corrupt"),
    ("SQLITE_FULL", "the disk is full"),
    ("SQLITE_CANTOPEN", "the database file cannot be opened"),
    ("SQLITE_READONLY", "the database file is read-only"),
    ("SQLITE_PERM", "permission denied"),
    ("SQLITE_IOERR", "an I/O error occurred"),
)


class SQLiteStore:
    """Profiles, burst windows and challenges in one SQLite file.

    ``update`` holds the write lock (``BEGIN IMMEDIATE``) from the read to the
    commit, so concurrent updates of a user, from threads or processes, serialise
    and none is lost; an exception rolls back and leaves the stored profile as it
    was. ``busy_timeout_s`` is how long a call waits for another writer before
    failing with ProfileStoreError.
    """

    def __init__(
        self, path: Path | str, *, retention_days: float = 180.0, busy_timeout_s: float = 5.0
    ) -> None:
        if retention_days <= 0:
            raise ConfigurationError(
                f"profile retention must be positive, got {retention_days!r} days",
                field="retention_days",
            )
        if str(path) in ("", ":memory:"):
            # Each thread has its own connection, so each would get its own private
            # in-memory database: updates would silently not be shared.
            raise ConfigurationError(
                f"SQLite profile store needs a file path, got {str(path)!r};"
                " use memory:// for an in-process store",
                field="path",
            )
        self._path = Path(path)
        self._retention_s = retention_days * 86400.0
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()
        # One writer at a time in this process: threads queue on a lock that hands over
        # at once, where SQLite's busy handler would have them sleep in growing steps
        # (p99 of 1 s at 16 concurrent requests). Reentrant: ``fn`` may write too.
        self._write_lock = threading.RLock()
        # Every connection opened, with its thread, so that ``close`` reaches them all.
        self._conns: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._closed = False
        self._burst_inserts = itertools.count()
        self._newest_burst_ts = float("-inf")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProfileStoreError(
                f"SQLite profile store {self._path}: cannot create its directory: {exc}",
                path=str(self._path),
            ) from exc
        conn = self._conn()
        try:
            # WAL is a property of the file, set once; the schema is idempotent.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self.close()
            self._fail(exc, "opening")

    @property
    def path(self) -> Path:
        return self._path

    def update(self, user_key: str, fn: Callable[[Profile], T]) -> T:
        with self._writing("update"):
            return self._update(user_key, fn)

    def _update(self, user_key: str, fn: Callable[[Profile], T]) -> T:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail(exc, "update")
        try:
            try:
                row = conn.execute(
                    _SELECT_PROFILE, (user_key, time.time() - self._retention_s)
                ).fetchone()
            except sqlite3.Error as exc:
                self._fail(exc, "update")
            profile = Profile(user_key=user_key) if row is None else Profile.loads(row[0])
            result = fn(profile)
            try:
                conn.execute(_UPSERT_PROFILE, (user_key, profile.dumps(), time.time()))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._fail(exc, "update")
        except BaseException:
            _rollback(conn)
            raise
        return result

    def get(self, user_key: str) -> Profile | None:
        try:
            row = (
                self._conn()
                .execute(_SELECT_PROFILE, (user_key, time.time() - self._retention_s))
                .fetchone()
            )
        except sqlite3.Error as exc:
            self._fail(exc, "get")
        return None if row is None else Profile.loads(row[0])

    def delete(self, user_key: str) -> bool:
        try:
            return self._conn().execute(_DELETE_PROFILE, (user_key,)).rowcount > 0
        except sqlite3.Error as exc:
            self._fail(exc, "delete")

    def burst_counts(self, ip_key: str, network: str, now: float) -> BurstCounts:
        start = now - BURST_WINDOW_S
        conn = self._conn()
        try:
            ip_users, ip_failures = conn.execute(
                _BURST_COUNTS, (f"ip:{ip_key}", start, now)
            ).fetchone()
            net_users, net_failures = conn.execute(
                _BURST_COUNTS, (f"net:{network}", start, now)
            ).fetchone()
        except sqlite3.Error as exc:
            self._fail(exc, "burst_counts")
        return BurstCounts(int(ip_users), int(ip_failures), int(net_users), int(net_failures))

    def record_burst(
        self, ip_key: str, network: str, user_key: str, ts: float, failed: bool
    ) -> None:
        flag = int(failed)
        conn = self._conn()
        # A benign race: two threads may both raise the mark; either value prunes safely.
        self._newest_burst_ts = max(self._newest_burst_ts, ts)
        try:
            with self._writing("record_burst"):
                conn.execute(
                    _INSERT_BURSTS,
                    (f"ip:{ip_key}", ts, user_key, flag, f"net:{network}", ts, user_key, flag),
                )
                if next(self._burst_inserts) % _PRUNE_EVERY == _PRUNE_EVERY - 1:
                    conn.execute(_PRUNE_BURSTS, (self._newest_burst_ts - _PRUNE_AGE_S,))
        except sqlite3.Error as exc:
            self._fail(exc, "record_burst")

    def save_challenge(self, challenge_id: str, record: bytes, ttl_s: float, now: float) -> None:
        try:
            self._conn().execute(_SAVE_CHALLENGE, (challenge_id, record, now + ttl_s))
        except sqlite3.Error as exc:
            self._fail(exc, "save_challenge")

    def load_challenge(self, challenge_id: str, now: float) -> bytes | None:
        try:
            row = self._conn().execute(_LOAD_CHALLENGE, (challenge_id, now)).fetchone()
        except sqlite3.Error as exc:
            self._fail(exc, "load_challenge")
        return None if row is None else bytes(row[0])

    def claim_challenge(self, challenge_id: str, now: float) -> bool:
        try:
            return self._conn().execute(_CLAIM_CHALLENGE, (challenge_id, now)).rowcount == 1
        except sqlite3.Error as exc:
            self._fail(exc, "claim_challenge")

    def purge(self, older_than: float) -> int:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                removed = conn.execute(_PURGE_PROFILES, (older_than,)).rowcount
                conn.execute(_PURGE_CHALLENGES, (time.time(),))
                conn.execute(_PURGE_BURSTS, (_PRUNE_AGE_S,))
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except sqlite3.Error as exc:
            self._fail(exc, "purge")
        return int(removed)

    def count(self) -> int:
        try:
            row = (
                self._conn().execute(_COUNT_PROFILES, (time.time() - self._retention_s,)).fetchone()
            )
        except sqlite3.Error as exc:
            self._fail(exc, "count")
        return int(row[0])

    def ping(self) -> None:
        try:
            self._conn().execute("SELECT 1 FROM profiles LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            self._fail(exc, "ping")

    def close(self) -> None:
        """Close every connection this store opened, in whichever thread."""
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for _, conn in conns:
            conn.close()

    @contextlib.contextmanager
    def _writing(self, action: str) -> Iterator[None]:
        """Hold this process's write lock, waiting no longer than the busy timeout."""
        if not self._write_lock.acquire(timeout=self._busy_timeout_s):
            raise ProfileStoreError(
                f"SQLite profile store {self._path}: {action} failed: the database stayed"
                f" locked by another writer beyond the busy timeout ({self._busy_timeout_s:g} s)",
                path=str(self._path),
            )
        try:
            yield
        finally:
            self._write_lock.release()

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or self._closed:
            conn = self._local.conn = self._open()
        return conn

    def _open(self) -> sqlite3.Connection:
        with self._lock:
            if self._closed:
                raise ProfileStoreError(
                    f"SQLite profile store {self._path} is closed", path=str(self._path)
                )
            # Threads come and go (executors): close what the finished ones left.
            live = []
            for thread, conn in self._conns:
                if thread.is_alive():
                    live.append((thread, conn))
                else:
                    conn.close()
            self._conns = live
            try:
                # check_same_thread=False only so that ``close`` may close connections
                # of other threads; each connection is still used by its own thread.
                conn = sqlite3.connect(
                    self._path,
                    timeout=self._busy_timeout_s,
                    isolation_level=None,
                    check_same_thread=False,
                )
            except sqlite3.Error as exc:
                self._fail(exc, "opening")
            try:
                conn.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.Error as exc:
                conn.close()
                self._fail(exc, "opening")
            self._conns.append((threading.current_thread(), conn))
            return conn

    def _fail(self, exc: sqlite3.Error, action: str) -> NoReturn:
        """Raise ``exc`` as a ProfileStoreError that says what went wrong in plain words."""
        name = getattr(exc, "sqlite_errorname", "") or ""
        reason = next((text for prefix, text in _REASONS if name.startswith(prefix)), None)
        if reason is not None and name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            reason = f"{reason} ({self._busy_timeout_s:g} s)"
        detail = f"{reason} [{exc}]" if reason else str(exc)
        raise ProfileStoreError(
            f"SQLite profile store {self._path}: {action} failed: {detail}",
            path=str(self._path),
        ) from exc


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is open; a failure here must not mask the cause."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
