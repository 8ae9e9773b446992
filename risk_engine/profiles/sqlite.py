"""SQLite profile store: the embedded default, safe across threads and processes.

One connection per store, used by one thread at a time under a lock: writes
serialise anyway (SQLite has one writer), and a single connection lets the store
keep what it last read or wrote in memory and know when that went stale.
``PRAGMA data_version`` changes exactly when ANOTHER connection (another worker
process, an operator's shell) committed, so each transaction checks it right
after taking the write lock and drops its caches if so. Until then:

* decoded profiles are served from an LRU cache (``cache_profiles`` of them;
  about 22 KB each in memory), so a hot user costs no read and no JSON decode;
* the burst windows of each address and network are mirrored in memory after
  their first read (``bursts.BurstWindow``), so counting is no SQL query;
* so are the networks' crowds (``crowds.Crowd``), read once per network.

Every update still writes its profile and burst rows, and the file stays the
truth that another process or a restart reads. Commits are grouped: an update
joins the open write transaction, which is committed once ``commit_every``
updates are in it or it is ``commit_after_s`` old (5 ms by default), by the
update that finds it so (from nine tenths of that age on) or by the store's
maintenance thread, and at once with a challenge's claim, an erasure, a purge or
``close``. A commit costs as much as
the rest of an update (locks, two writes per page); one per few milliseconds
instead of one per update took a server from 1,368 to 1,642 decisions/s (wrk,
16 connections, SQLite, one worker). The price: a crash of the process (not just
of the machine) may lose the last few milliseconds of profile updates, answered
already (the audit log holds their decisions, but for its writer's last few
milliseconds: ``audit_writer.py``); and another process sees an
update a few milliseconds later.
``commit_after_s=0`` commits every update. WAL lets readers run beside the
writer, and ``synchronous=NORMAL`` skips the fsync per commit (a power cut may
lose the last commits). The maintenance thread also checkpoints the WAL into the
database file, so that the copy does not land on a request.

Retention matches Redis: a profile not written for ``retention_days`` reads as
absent (and is overwritten by the next update); ``purge`` reclaims the rows.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sqlite3
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from risk_engine.errors import ConfigurationError, ProfileStoreError
from risk_engine.profiles.bursts import BurstWindow
from risk_engine.profiles.crowds import (
    CROWD_MAX_AGE_DAYS,
    CROWD_MAX_USERS,
    Crowd,
    crowd_day,
)
from risk_engine.profiles.integrity import CorruptProfileError, Incidents
from risk_engine.profiles.model import BurstCounts, Profile
from risk_engine.profiles.store import BURST_MAX_ENTRIES, BURST_WINDOW_S, BurstNote, EventLabel

T = TypeVar("T")
log = logging.getLogger("risk_engine.profiles")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS profiles ("
    " user_key TEXT PRIMARY KEY, data BLOB NOT NULL, updated_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bursts ("
    " key TEXT NOT NULL, ts REAL NOT NULL, user_key TEXT NOT NULL, failed INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS bursts_key_ts ON bursts (key, ts)",
    "CREATE TABLE IF NOT EXISTS challenges ("
    " id TEXT PRIMARY KEY, record BLOB NOT NULL, expires_at REAL NOT NULL,"
    " used INTEGER NOT NULL DEFAULT 0)",
    # Decided events, for the feedback rules; by user too, for erasure.
    "CREATE TABLE IF NOT EXISTS events ("
    " event_id TEXT PRIMARY KEY, user_key TEXT NOT NULL, label TEXT,"
    " updated_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_user ON events (user_key)",
    # The networks' crowds (profiles.crowds); by user too, for erasure.
    "CREATE TABLE IF NOT EXISTS crowds ("
    " network TEXT NOT NULL, user_key TEXT NOT NULL, day INTEGER NOT NULL,"
    " PRIMARY KEY (network, user_key)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS crowds_user ON crowds (user_key)",
    # Stored profiles that failed their checksum, kept aside for an operator to look at.
    "CREATE TABLE IF NOT EXISTS quarantine ("
    " user_key TEXT NOT NULL, data BLOB NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL)",
)

_SELECT_PROFILE = "SELECT data, updated_at FROM profiles WHERE user_key = ? AND updated_at >= ?"
_UPSERT_PROFILE = (
    "INSERT INTO profiles (user_key, data, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (user_key) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at"
)
_DELETE_PROFILE = "DELETE FROM profiles WHERE user_key = ?"
_SELECT_PROFILE_DATA = "SELECT data FROM profiles WHERE user_key = ?"
_COUNT_PROFILES = "SELECT COUNT(*) FROM profiles WHERE updated_at >= ?"
_PURGE_PROFILES = "DELETE FROM profiles WHERE updated_at < ?"

_INSERT_BURSTS = "INSERT INTO bursts (key, ts, user_key, failed) VALUES (?, ?, ?, ?), (?, ?, ?, ?)"
# A key's newest BURST_MAX_ENTRIES rows, oldest first: what its in-memory window holds.
_SELECT_WINDOW = (
    "SELECT ts, user_key, failed FROM ("
    " SELECT rowid, ts, user_key, failed FROM bursts WHERE key = ?"
    f" ORDER BY ts DESC, rowid DESC LIMIT {BURST_MAX_ENTRIES})"
    " ORDER BY ts, rowid"
)
# Rows arrive in roughly increasing ts, so rowid order is time order: deleting every
# row before the first live one costs a walk over the expired head only, with no
# index on ts to maintain. A late out-of-order row merely waits for the next prune.
_PRUNE_BURSTS = (
    "DELETE FROM bursts WHERE rowid < COALESCE("
    " (SELECT rowid FROM bursts WHERE ts > ? ORDER BY rowid LIMIT 1),"
    " (SELECT MAX(rowid) + 1 FROM bursts))"
)
_FORGET_BURSTS = "DELETE FROM bursts WHERE key = ? AND user_key = ?"
_SELECT_CROWD = "SELECT user_key, day FROM crowds WHERE network = ?"
_INSERT_CROWD = "INSERT OR IGNORE INTO crowds (network, user_key, day) VALUES (?, ?, ?)"
_AGE_CROWD = "DELETE FROM crowds WHERE network = ? AND day < ?"
_FORGET_CROWDS = "DELETE FROM crowds WHERE user_key = ?"
_PURGE_CROWDS = "DELETE FROM crowds WHERE day < ?"
_DELETE_CHALLENGE = "DELETE FROM challenges WHERE id = ?"
_INSERT_EVENT = (
    "INSERT INTO events (event_id, user_key, label, updated_at) VALUES (?, ?, NULL, ?)"
    " ON CONFLICT (event_id) DO NOTHING"
)
_LABEL_EVENT = (
    "UPDATE events SET label = ? WHERE event_id = ? AND label IS NULL AND updated_at >= ?"
)
_SELECT_EVENT = "SELECT user_key, label FROM events WHERE event_id = ? AND updated_at >= ?"
_DELETE_EVENTS = "DELETE FROM events WHERE user_key = ?"
_PURGE_EVENTS = "DELETE FROM events WHERE updated_at < ?"
_QUARANTINE = "INSERT INTO quarantine (user_key, data, reason, at) VALUES (?, ?, ?, ?)"
_FORGET_QUARANTINE = "DELETE FROM quarantine WHERE user_key = ?"
_PURGE_QUARANTINE = "DELETE FROM quarantine WHERE at < ?"
_ALL_PROFILES = "SELECT data FROM profiles WHERE updated_at >= ?"
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
_PRUNE_EVERY = 128
# Rows go once two windows older than the newest one, so that an event recorded
# slightly out of order (a skewed clock) cannot prune rows that a query at an
# earlier ``now`` still counts. Counting filters by ts, so this costs no accuracy.
_PRUNE_AGE_S = 2 * BURST_WINDOW_S

# Decoded profiles kept in memory by default (about 22 KB each: some 90 MB).
DEFAULT_CACHE_PROFILES = 4096
# Burst windows mirrored in memory at most; past it the stalest half is dropped
# (and read again from the database when next needed).
_MAX_WINDOWS = 65536
# Crowds mirrored in memory at most (up to CROWD_MAX_USERS users each); past it they
# are all dropped, and each read again (one indexed query) when next needed.
_MAX_CROWDS = 16384
# How often the background thread copies the WAL into the database file.
CHECKPOINT_EVERY_S = 1.0
# Group commit: an open write transaction is committed at this age or size.
COMMIT_AFTER_S = 0.005
COMMIT_EVERY = 64
# A group counts as due from this share of ``commit_after_s`` on: under load the
# update that finds it so commits it before the maintenance thread's look at its
# due time, so that thread rarely takes the store's lock, and never waits for it.
_DUE_SHARE = 0.9
# The connection's own checkpoint stays as a backstop, should that thread fall behind.
_AUTOCHECKPOINT_PAGES = 16384

# SQLite's page cache per connection, and how much of the file it may map.
_PAGE_CACHE_KB = 65536
_MMAP_BYTES = 1 << 30

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
    """Profiles, burst windows and challenges in one SQLite file (see the module docstring).

    Updates run inside the group's write transaction (``BEGIN IMMEDIATE``), so
    concurrent updates of a user, from threads or processes, serialise and none is
    lost. An exception from ``fn`` comes before the update writes anything: the
    stored profile stays as it was (the cache, which ``fn`` may have changed, is
    dropped). A failed statement or commit rolls the whole group back. Every wait,
    for this process's lock or another writer's, ends after ``busy_timeout_s``
    with ProfileStoreError. ``cache_profiles=0`` turns the profile cache off
    (every update reads and decodes the row).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        retention_days: float = 180.0,
        busy_timeout_s: float = 5.0,
        cache_profiles: int = DEFAULT_CACHE_PROFILES,
        checkpoint_every_s: float | None = CHECKPOINT_EVERY_S,
        commit_after_s: float = COMMIT_AFTER_S,
        commit_every: int = COMMIT_EVERY,
    ) -> None:
        if retention_days <= 0:
            raise ConfigurationError(
                f"profile retention must be positive, got {retention_days!r} days",
                field="retention_days",
            )
        if cache_profiles < 0:
            raise ConfigurationError(
                f"profile cache size must be 0 or more, got {cache_profiles!r}",
                field="cache_profiles",
            )
        if not 0 <= commit_after_s <= 1 or commit_every < 1:
            raise ConfigurationError(
                f"group commit needs 0 <= commit_after_s <= 1 and commit_every >= 1,"
                f" got {commit_after_s!r} and {commit_every!r}",
                field="commit_after_s",
            )
        if str(path) in ("", ":memory:"):
            # The maintenance thread has its own connection, which would get its own
            # private in-memory database; and nothing would survive the process anyway.
            raise ConfigurationError(
                f"SQLite profile store needs a file path, got {str(path)!r};"
                " use memory:// for an in-process store",
                field="path",
            )
        self._path = Path(path)
        self._retention_s = retention_days * 86400.0
        self._busy_timeout_s = busy_timeout_s
        self._cache_size = cache_profiles
        # One thread at a time on the connection; reentrant for the store's own calls.
        self._lock = threading.RLock()
        self._closed = False
        # PRAGMA data_version as of our last look: a change means another connection wrote.
        self._data_version: int | None = None
        # user_key -> (profile as last written, wall time it was written).
        self._profiles: OrderedDict[str, tuple[Profile, float]] = OrderedDict()
        # burst key -> its rows as written (present = mirrored; absent = read on demand).
        self._windows: dict[str, BurstWindow] = {}
        # network -> its crowd rows as written (present = mirrored; absent = read on demand).
        self._crowds: dict[str, Crowd] = {}
        self._burst_inserts = itertools.count()
        self._newest_burst_ts = float("-inf")
        self._commit_after_s = commit_after_s
        self._commit_every = commit_every
        # The open (group) transaction: when it began (monotonic s) and its updates.
        self._opened_at: float | None = None
        self._grouped = 0
        # The writes of each update in the open group, to apply again should SQLite roll
        # the group back (a failed commit): no other update is lost with a failing one.
        self._journal: list[list[tuple[str, tuple[Any, ...]]]] = []
        self._writes: list[tuple[str, tuple[Any, ...]]] = []
        self.incidents = Incidents()
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProfileStoreError(
                f"SQLite profile store {self._path}: cannot create its directory: {exc}",
                path=str(self._path),
            ) from exc
        self._conn = self._connect()
        try:
            # WAL is a property of the file, set once; the schema is idempotent.
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                self._conn.execute(statement)
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._conn.close()
            self._fail(exc, "opening")
        self._maintenance = _Maintenance(
            weakref.ref(self),
            self._connect() if checkpoint_every_s is not None else None,
            checkpoint_every_s or 0.0,
            commit_after_s,
        )

    @property
    def path(self) -> Path:
        return self._path

    # -- profiles -----------------------------------------------------------------------

    def update(self, user_key: str, fn: Callable[[Profile], T]) -> T:
        with self._transaction("update") as conn:
            profile = self._load(conn, user_key)
            result = fn(profile)
            self._save(conn, profile)
        return result

    def update_event(self, note: BurstNote, fn: Callable[[Profile, BurstCounts], T]) -> T:
        ip, net = f"ip:{note.ip_key}", f"net:{note.network}"
        flag = int(note.failed)
        # The outer hold keeps the lock from the read to the mirrors taking the new rows.
        with self._locked("update"):
            with self._transaction("update") as conn:
                ip_window = self._window(conn, ip)
                net_window = self._window(conn, net)
                ip_users, ip_failures = ip_window.counts(note.ts)
                net_users, net_failures = net_window.counts(note.ts)
                crowd = self._crowd(conn, note.network)
                day = crowd_day(note.ts)
                bursts = BurstCounts(
                    ip_users,
                    ip_failures,
                    net_users,
                    net_failures,
                    *crowd.counts(note.user_key, day),
                )
                profile = self._load(conn, note.user_key)
                result = fn(profile, bursts)
                profile.note_window(ip, note.ts)
                profile.note_window(net, note.ts)
                self._save(conn, profile)
                self._write(
                    conn,
                    _INSERT_BURSTS,
                    (ip, note.ts, note.user_key, flag, net, note.ts, note.user_key, flag),
                )
                if note.event_id:
                    self._write(conn, _INSERT_EVENT, (note.event_id, note.user_key, time.time()))
                if note.succeeded:
                    self._note_crowd(conn, note.network, note.user_key, day, crowd.members)
                self._maybe_prune(conn, note.ts)
            # Written: now the mirrors take the new rows (should the group's commit fail,
            # its abort empties the mirrors with it).
            ip_window.add(note.ts, note.user_key, note.failed)
            net_window.add(note.ts, note.user_key, note.failed)
            if note.succeeded:
                crowd.note(note.user_key, day)
        return result

    def get(self, user_key: str) -> Profile | None:
        # Always from the database: the caller gets its own object, never the cached one.
        with self._locked("get") as conn:
            try:
                row = conn.execute(
                    _SELECT_PROFILE, (user_key, time.time() - self._retention_s)
                ).fetchone()
            except sqlite3.Error as exc:
                self._fail(exc, "get")
        if row is None:
            return None
        try:
            return Profile.loads(row[0])
        except CorruptProfileError:
            # Quarantined by the user's next update; until then there is nothing to read.
            return None

    def delete(self, user_key: str) -> bool:
        # Erasure is committed before the call returns, then the WAL is emptied: with
        # secure_delete on (see _connect), the deleted rows are zeroes in the file.
        with self._transaction("delete", flush=True) as conn:
            self._profiles.pop(user_key, None)
            row = conn.execute(_SELECT_PROFILE_DATA, (user_key,)).fetchone()
            profile = _readable(row[0]) if row is not None else None
            if profile is not None:
                for key in profile.windows:
                    conn.execute(_FORGET_BURSTS, (key, user_key))
                    # Read again from the rows when next needed.
                    self._windows.pop(key, None)
                for challenge_id in profile.challenge_ids():
                    conn.execute(_DELETE_CHALLENGE, (challenge_id,))
            conn.execute(_DELETE_EVENTS, (user_key,))
            conn.execute(_FORGET_CROWDS, (user_key,))
            # Erasure is rare: read every crowd again rather than find the user's.
            self._crowds.clear()
            conn.execute(_FORGET_QUARANTINE, (user_key,))
            deleted: bool = conn.execute(_DELETE_PROFILE, (user_key,)).rowcount > 0
        with self._locked("delete") as conn:
            try:
                # TRUNCATE: the WAL's copies of the erased pages go with its content.
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:
                self._fail(exc, "delete")
        return deleted

    def label_event(self, event_id: str, label: str) -> EventLabel | None:
        # Committed at once: the answer tells the caller whether its label was the one set.
        with self._transaction("label_event", flush=True) as conn:
            horizon = time.time() - self._retention_s
            new = conn.execute(_LABEL_EVENT, (label, event_id, horizon)).rowcount == 1
            row = conn.execute(_SELECT_EVENT, (event_id, horizon)).fetchone()
        if row is None:
            return None
        return EventLabel(str(row[0]), str(row[1]), new)

    def sealing_keys(self) -> dict[str, str]:
        keys: dict[str, str] = {}
        with self._locked("sealing_keys") as conn:
            try:
                rows = conn.execute(_ALL_PROFILES, (time.time() - self._retention_s,)).fetchall()
            except sqlite3.Error as exc:
                self._fail(exc, "sealing_keys")
        for (data,) in rows:
            profile = _readable(data)
            if profile is not None:
                keys[profile.ref] = profile.data_key
        return keys

    def _load(self, conn: sqlite3.Connection, user_key: str) -> Profile:
        """The user's profile as last written (fresh when absent or past retention)."""
        horizon = time.time() - self._retention_s
        cached = self._profiles.get(user_key)
        if cached is not None:
            if cached[1] >= horizon:
                self._profiles.move_to_end(user_key)
                return cached[0]
            del self._profiles[user_key]
        row = conn.execute(_SELECT_PROFILE, (user_key, horizon)).fetchone()
        if row is None:
            return Profile(user_key=user_key)
        try:
            return Profile.loads(row[0])
        except CorruptProfileError as exc:
            # Kept aside, not read as a different history: the user starts afresh.
            self._write(conn, _QUARANTINE, (user_key, row[0], exc.message, time.time()))
            self.incidents.note(
                "quarantined",
                "SQLite profile store %s: a stored profile is corrupt (%s); kept in the"
                " quarantine table, the user starts afresh",
                self._path,
                exc.message,
            )
            return Profile(user_key=user_key)

    def _save(self, conn: sqlite3.Connection, profile: Profile) -> None:
        now = time.time()
        self._write(conn, _UPSERT_PROFILE, (profile.user_key, profile.stored(), now))
        if self._cache_size:
            # Cached before the commit; a group that fails to commit empties the cache.
            self._profiles[profile.user_key] = (profile, now)
            self._profiles.move_to_end(profile.user_key)
            if len(self._profiles) > self._cache_size:
                self._profiles.popitem(last=False)

    # -- bursts -------------------------------------------------------------------------

    def burst_counts(self, ip_key: str, network: str, now: float) -> BurstCounts:
        with self._locked("burst_counts") as conn:
            try:
                self._sync(conn)
                ip_window = self._window(conn, f"ip:{ip_key}")
                net_window = self._window(conn, f"net:{network}")
            except sqlite3.Error as exc:
                self._fail(exc, "burst_counts")
            ip_users, ip_failures = ip_window.counts(now)
            net_users, net_failures = net_window.counts(now)
        return BurstCounts(ip_users, ip_failures, net_users, net_failures)

    def record_burst(
        self, ip_key: str, network: str, user_key: str, ts: float, failed: bool
    ) -> None:
        ip, net, flag = f"ip:{ip_key}", f"net:{network}", int(failed)
        with self._locked("record_burst"):
            with self._transaction("record_burst") as conn:
                ip_window = self._window(conn, ip)
                net_window = self._window(conn, net)
                self._write(conn, _INSERT_BURSTS, (ip, ts, user_key, flag, net, ts, user_key, flag))
                self._maybe_prune(conn, ts)
            ip_window.add(ts, user_key, failed)
            net_window.add(ts, user_key, failed)

    def _note_crowd(
        self,
        conn: sqlite3.Connection,
        network: str,
        user_key: str,
        day: int,
        members: dict[str, int],
    ) -> None:
        """``Crowd.note``'s writes, on the crowd as it was before the event (``members``)."""
        if user_key in members:
            return
        start = day - CROWD_MAX_AGE_DAYS
        if any(first < start for first in members.values()):
            self._write(conn, _AGE_CROWD, (network, start))
        if sum(first >= start for first in members.values()) < CROWD_MAX_USERS:
            self._write(conn, _INSERT_CROWD, (network, user_key, day))

    def _crowd(self, conn: sqlite3.Connection, network: str) -> Crowd:
        """The network's mirrored crowd, read from the database on first use."""
        crowd = self._crowds.get(network)
        if crowd is None:
            if len(self._crowds) >= _MAX_CROWDS:
                self._crowds.clear()
            crowd = Crowd()
            for user_key, day in conn.execute(_SELECT_CROWD, (network,)):
                crowd.members[str(user_key)] = int(day)
            self._crowds[network] = crowd
        return crowd

    def _window(self, conn: sqlite3.Connection, key: str) -> BurstWindow:
        """The key's mirrored window, read from the database on first use."""
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= _MAX_WINDOWS:
                self._shrink_windows()
            window = BurstWindow()
            for ts, user_key, failed in conn.execute(_SELECT_WINDOW, (key,)):
                window.add(float(ts), str(user_key), bool(failed))
            self._windows[key] = window
        return window

    def _shrink_windows(self) -> None:
        """Forget idle windows, then the stalest half: they are read again when needed."""
        start = self._newest_burst_ts - BURST_WINDOW_S
        idle = [k for k, w in self._windows.items() if not w.entries or w.entries[-1][0] <= start]
        for key in idle:
            del self._windows[key]
        if len(self._windows) >= _MAX_WINDOWS:
            for key in list(self._windows)[: len(self._windows) // 2]:
                del self._windows[key]

    def _maybe_prune(self, conn: sqlite3.Connection, ts: float) -> None:
        self._newest_burst_ts = max(self._newest_burst_ts, ts)
        if next(self._burst_inserts) % _PRUNE_EVERY == _PRUNE_EVERY - 1:
            # Pruned rows are two windows old: no count, mirrored or not, includes them.
            conn.execute(_PRUNE_BURSTS, (self._newest_burst_ts - _PRUNE_AGE_S,))

    # -- challenges ---------------------------------------------------------------------

    def save_challenge(self, challenge_id: str, record: bytes, ttl_s: float, now: float) -> None:
        # Grouped like an update: its result comes back after a person's step-up, seconds
        # later, long after the group is committed (and visible to other workers).
        with self._transaction("save_challenge") as conn:
            self._write(conn, _SAVE_CHALLENGE, (challenge_id, record, now + ttl_s))

    def load_challenge(self, challenge_id: str, now: float) -> bytes | None:
        with self._locked("load_challenge") as conn:
            try:
                row = conn.execute(_LOAD_CHALLENGE, (challenge_id, now)).fetchone()
            except sqlite3.Error as exc:
                self._fail(exc, "load_challenge")
        return None if row is None else bytes(row[0])

    def claim_challenge(self, challenge_id: str, now: float) -> bool:
        # Committed before it is honoured: a claim lost in a crash would allow a replay.
        with self._transaction("claim_challenge", flush=True) as conn:
            claimed: bool = conn.execute(_CLAIM_CHALLENGE, (challenge_id, now)).rowcount == 1
        return claimed

    # -- housekeeping -------------------------------------------------------------------

    def purge(self, older_than: float) -> int:
        with self._transaction("purge", flush=True) as conn:
            # The caches would otherwise keep serving what is deleted here.
            self._profiles.clear()
            self._crowds.clear()
            removed = conn.execute(_PURGE_PROFILES, (older_than,)).rowcount
            conn.execute(_PURGE_CHALLENGES, (time.time(),))
            conn.execute(_PURGE_EVENTS, (older_than,))
            conn.execute(_PURGE_QUARANTINE, (older_than,))
            conn.execute(_PURGE_BURSTS, (_PRUNE_AGE_S,))
            # Crowd memberships live as long as the profiles (by event day).
            conn.execute(_PURGE_CROWDS, (crowd_day(older_than),))
        return int(removed)

    def count(self) -> int:
        with self._locked("count") as conn:
            try:
                row = conn.execute(_COUNT_PROFILES, (time.time() - self._retention_s,)).fetchone()
            except sqlite3.Error as exc:
                self._fail(exc, "count")
        return int(row[0])

    def ping(self) -> None:
        with self._locked("ping") as conn:
            try:
                conn.execute("SELECT 1 FROM profiles LIMIT 1").fetchall()
            except sqlite3.Error as exc:
                self._fail(exc, "ping")

    def close(self) -> None:
        """Commit what is pending, stop the thread, close the connections.

        Later calls fail clearly; closing twice is harmless.
        """
        self._maintenance.stop()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._opened_at is not None:
                    self._commit("close")
            finally:
                self._profiles.clear()
                self._windows.clear()
                self._crowds.clear()
                self._conn.close()

    # -- the connection -----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, action: str) -> Iterator[sqlite3.Connection]:
        """The connection, for this thread alone, waiting no longer than the busy timeout."""
        if not self._lock.acquire(timeout=self._busy_timeout_s):
            raise ProfileStoreError(
                f"SQLite profile store {self._path}: {action} failed: the database stayed"
                f" locked by another writer beyond the busy timeout ({self._busy_timeout_s:g} s)",
                path=str(self._path),
            )
        try:
            if self._closed:
                raise ProfileStoreError(
                    f"SQLite profile store {self._path} is closed", path=str(self._path)
                )
            yield self._conn
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def _transaction(self, action: str, *, flush: bool = False) -> Iterator[sqlite3.Connection]:
        """One update in the group transaction, committed when the group is due.

        Each update's writes are journaled: a statement that fails undoes this
        update alone, since the whole group is rolled back and its other updates
        are applied again, each alone (``_undo_update``), as after a failed commit.
        So an update needs no savepoint of its own in the group (``_replay`` sets
        one per update). ``flush`` commits the group as soon as this update is in
        it (a flushed update's own writes are not journaled: if the commit fails,
        it fails).
        """
        with self._locked(action) as conn:
            if self._opened_at is None:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    self._opened_at = time.monotonic()
                    self._grouped = 0
                    self._journal = []
                    self._sync(conn)
                except sqlite3.Error as exc:
                    self._abort(conn)
                    self._fail(exc, action)
                self._maintenance.opened()
            self._writes = []
            try:
                yield conn
            except sqlite3.Error as exc:
                self._undo_update(conn, exc, action)
                self._fail(exc, action)
            except BaseException:
                # ``fn`` failed, before this update wrote anything (every caller runs it
                # first); it may have changed its cached profile, though. The group goes
                # on; the next read of the profile takes the group's last write of it.
                self._profiles.clear()
                raise
            if not flush:
                self._journal.append(self._writes)
            self._writes = []
            self._grouped += 1
            if (
                flush
                or self._grouped >= self._commit_every
                or time.monotonic() - self._opened_at >= self._commit_after_s * _DUE_SHARE
            ):
                self._commit(action, mine=flush)

    def _write(self, conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> None:
        """Execute one write of the current update, and journal it for ``_replay``."""
        conn.execute(sql, params)
        self._writes.append((sql, params))

    def _undo_update(self, conn: sqlite3.Connection, exc: sqlite3.Error, action: str) -> None:
        """Undo the failed update alone: the rest of its group is applied again."""
        # What the caches hold may come from the failed update: read again from the file.
        self._profiles.clear()
        self._windows.clear()
        self._crowds.clear()
        self._writes = []
        self.incidents.note(
            "update_undone",
            "SQLite profile store %s: %s failed and was undone alone: %s",
            self._path,
            action,
            exc,
        )
        # Undoing to the savepoint is not enough: after some errors (a corrupt page)
        # SQLite fails every later statement and the commit of the transaction. The
        # group is rolled back (if SQLite has not done so) and its other updates,
        # journaled, are applied again in a fresh transaction and committed.
        self._replay(f"{action} failed: {exc}")

    def _commit(self, action: str, *, mine: bool = False) -> None:
        """Commit the group transaction (the lock held).

        When the commit fails, its updates are applied again, each alone (``_replay``);
        ``mine``: the caller's own writes were not journaled, so its call fails.
        """
        self._opened_at = None
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            kept = self._replay(f"commit failed: {exc}")
            if mine or not kept:
                self._fail(exc, action)
        self._journal = []
        self._maintenance.wrote()

    def _replay(self, why: str) -> bool:
        """Apply the group's journaled updates again after SQLite rolled it back.

        Each in a savepoint of its own, so that one failing again costs only itself;
        every update that does not reach the file is logged and counted as lost.
        False when the new transaction could not be committed at all.
        """
        journal, self._journal = self._journal, []
        self._abort(self._conn)
        conn, lost = self._conn, 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            for writes in journal:
                conn.execute("SAVEPOINT one_update")
                try:
                    for sql, params in writes:
                        conn.execute(sql, params)
                except sqlite3.Error:
                    lost += 1
                    conn.execute("ROLLBACK TO one_update")
                conn.execute("RELEASE one_update")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            self.incidents.note(
                "update_lost",
                "SQLite profile store %s: %s; applying its %d updates again failed too,"
                " they are lost: %s",
                self._path,
                why,
                len(journal),
                exc,
                count=len(journal),
            )
            return False
        if lost:
            self.incidents.note(
                "update_lost",
                "SQLite profile store %s: %s; %d of its %d updates failed again and are lost",
                self._path,
                why,
                lost,
                len(journal),
                count=lost,
            )
        else:
            log.warning(
                "SQLite profile store %s: %s; its %d other updates were applied again",
                self._path,
                why,
                len(journal),
            )
        return True

    def group_due_in(self) -> float | None:
        """Seconds until the open group is due for its commit (None: no group is open).

        Read without the lock, as a hint for the maintenance thread: it takes the
        lock only when a commit may be due (``commit_if_due`` checks again).
        """
        opened = self._opened_at
        if opened is None or self._closed:
            return None
        return opened + self._commit_after_s * _DUE_SHARE - time.monotonic()

    def commit_if_due(self) -> None:
        """Commit the group transaction if it is old enough (the maintenance thread's call)."""
        with self._lock:
            opened = self._opened_at
            if self._closed or opened is None:
                return
            if time.monotonic() - opened >= self._commit_after_s * _DUE_SHARE:
                with contextlib.suppress(ProfileStoreError):  # logged; the next update retries
                    self._commit("commit")

    def _sync(self, conn: sqlite3.Connection) -> None:
        """Drop the caches if another connection committed since we last looked."""
        (version,) = conn.execute("PRAGMA data_version").fetchone()
        if version != self._data_version:
            self._profiles.clear()
            self._windows.clear()
            self._crowds.clear()
            self._data_version = version

    def _abort(self, conn: sqlite3.Connection) -> None:
        """Roll the whole group back, and forget what the caches hold of it."""
        self._opened_at = None
        self._profiles.clear()
        self._windows.clear()
        self._crowds.clear()
        _rollback(conn)

    def _connect(self) -> sqlite3.Connection:
        try:
            # check_same_thread=False: the lock, not the thread, owns the connection.
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
            # Deleted and overwritten rows are zeroed, not left in free pages: an erased
            # user's profile (or an older copy of it) must not be readable in the file.
            conn.execute("PRAGMA secure_delete = ON")
            conn.execute(f"PRAGMA wal_autocheckpoint = {_AUTOCHECKPOINT_PAGES}")
            # SQLite's default page cache (2 MB) is smaller than a busy database: every
            # update would read the pages it rewrites back from the OS. Read through mmap.
            conn.execute(f"PRAGMA cache_size = -{_PAGE_CACHE_KB}")
            conn.execute(f"PRAGMA mmap_size = {_MMAP_BYTES}")
        except sqlite3.Error as exc:
            conn.close()
            self._fail(exc, "opening")
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


class _Maintenance:
    """The store's daemon thread: commits a group that nobody else will, checkpoints the WAL.

    A group transaction is committed by the next update once it is due; when no
    update comes, this thread does it ``commit_after_s`` after it opened. It sleeps
    until the open group's due time and takes the store's lock only if that group
    is still open then: under load an update has committed it already, and the
    thread sleeps on to the next group's due time (one wake-up per group at most,
    none while no group is open). A PASSIVE checkpoint never blocks writers; it
    runs only after commits, so an idle store costs nothing, and on a connection
    of its own. The thread holds the store weakly: a store dropped without
    ``close`` still goes away.
    """

    def __init__(
        self,
        store: weakref.ref[SQLiteStore],
        conn: sqlite3.Connection | None,
        checkpoint_every_s: float,
        commit_after_s: float,
    ) -> None:
        self._store = store
        self._conn = conn
        self._checkpoint_every_s = checkpoint_every_s
        self._commit_after_s = commit_after_s
        self._opened = threading.Event()
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="risk-engine-sqlite-maintenance", daemon=True
        )
        self._thread.start()

    def opened(self) -> None:
        # set() takes the event's lock: skip it while the thread is awake for groups.
        if self._commit_after_s > 0 and not self._opened.is_set():
            self._opened.set()

    def wrote(self) -> None:
        if not self._dirty.is_set():  # set() takes the event's lock: skip it when set
            self._dirty.set()

    def _run(self) -> None:
        next_checkpoint = time.monotonic() + self._checkpoint_every_s
        try:
            while not self._stopping.is_set():
                wait = next_checkpoint - time.monotonic() if self._conn is not None else None
                opened = self._opened.wait(timeout=max(0.0, wait) if wait is not None else None)
                checkpoint_at = next_checkpoint if self._conn is not None else None
                if opened and not self._commit_groups(checkpoint_at):
                    break
                if self._conn is not None and time.monotonic() >= next_checkpoint:
                    next_checkpoint = time.monotonic() + self._checkpoint_every_s
                    if self._dirty.is_set():
                        self._dirty.clear()
                        with contextlib.suppress(sqlite3.Error):
                            # Busy or failing now: the next round, or the backstop, does it.
                            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            if self._conn is not None:
                self._conn.close()

    def _commit_groups(self, checkpoint_at: float | None) -> bool:
        """Commit each open group at its due time until none is open (or a checkpoint is due).

        False when the thread must end (stopping, or the store is gone).
        """
        while checkpoint_at is None or time.monotonic() < checkpoint_at:
            # Cleared before the look: a group opened after it sets the event again.
            self._opened.clear()
            store = self._store()
            if store is None:
                return False
            due_in = store.group_due_in()
            del store
            if due_in is None:
                return not self._stopping.is_set()
            if due_in > 0:
                # Woken at the full age, past the share from which updates commit.
                if self._stopping.wait(due_in + self._commit_after_s * (1 - _DUE_SHARE)):
                    return False
                continue
            store = self._store()
            if store is None:
                return False
            store.commit_if_due()
            del store
        self._opened.set()  # a group may still be open: look again after the checkpoint
        return not self._stopping.is_set()

    def stop(self) -> None:
        self._stopping.set()
        self._opened.set()  # wake it
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is open; a failure here must not mask the cause."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _readable(raw: bytes) -> Profile | None:
    """The stored profile, or None when it is corrupt (its user's next update quarantines it)."""
    try:
        return Profile.loads(raw)
    except CorruptProfileError:
        return None
