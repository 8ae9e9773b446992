"""The decision log's one SQL backend, for SQLite (embedded) and PostgreSQL (shared).

Both dialects run the same statements (``?`` placeholders, rewritten for
psycopg). Rows are read newest first by (ts, decision_id) with keyset cursors,
so a page costs the same on the first page and the thousandth. The console's
overview reads hourly rollups that the writer keeps beside the rows, never a
scan of the rows themselves.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol

import orjson

from risk_engine.config import private_file
from risk_engine.decision_log.entries import (
    SCORE_BINS,
    Cursor,
    DecisionFilter,
    Overview,
    Page,
    rfc3339,
)
from risk_engine.errors import ConfigurationError, DecisionLogError

HOUR_S = 3600.0
MAX_PAGE = 500

DECISION_COLUMNS = (
    "decision_id",
    "ts",
    "decided_at",
    "event_id",
    "user_id",
    "session_id",
    "action",
    "action_class",
    "decision",
    "score",
    "required_acr",
    "challenge_id",
    "model_version",
    "policy_version",
    "degraded",
    "reasons",
    "ip",
    "country",
    "city",
    "latitude",
    "longitude",
    "device",
    "amount",
    "currency",
    "features",
    "shadow",
)
ENTRY_COLUMNS = (
    "entry_id",
    "kind",
    "ts",
    "user_id",
    "event_id",
    "challenge_id",
    "outcome",
    "detail",
)
_JSON_COLUMNS = frozenset({"reasons", "device", "features", "shadow"})

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS decisions (
        decision_id TEXT PRIMARY KEY,
        ts DOUBLE PRECISION NOT NULL,
        decided_at DOUBLE PRECISION NOT NULL,
        event_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        session_id TEXT,
        action TEXT NOT NULL,
        action_class TEXT NOT NULL,
        decision TEXT NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        required_acr TEXT,
        challenge_id TEXT,
        model_version TEXT NOT NULL,
        policy_version TEXT NOT NULL,
        degraded INTEGER NOT NULL,
        reasons TEXT NOT NULL,
        ip TEXT,
        country TEXT,
        city TEXT,
        latitude DOUBLE PRECISION,
        longitude DOUBLE PRECISION,
        device TEXT,
        amount DOUBLE PRECISION,
        currency TEXT,
        features TEXT,
        shadow TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts, decision_id)",
    "CREATE INDEX IF NOT EXISTS decisions_user ON decisions (user_id, ts, decision_id)",
    "CREATE INDEX IF NOT EXISTS decisions_decision ON decisions (decision, ts, decision_id)",
    "CREATE INDEX IF NOT EXISTS decisions_class ON decisions (action_class, ts, decision_id)",
    "CREATE INDEX IF NOT EXISTS decisions_model ON decisions (model_version, ts, decision_id)",
    "CREATE INDEX IF NOT EXISTS decisions_event ON decisions (event_id)",
    """CREATE TABLE IF NOT EXISTS decision_reasons (
        code TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        decision_id TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS decision_reasons_code ON decision_reasons (code, ts, decision_id)",
    "CREATE INDEX IF NOT EXISTS decision_reasons_id ON decision_reasons (decision_id)",
    """CREATE TABLE IF NOT EXISTS log_entries (
        entry_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        user_id TEXT,
        event_id TEXT,
        challenge_id TEXT,
        outcome TEXT,
        detail TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS log_entries_event ON log_entries (event_id)",
    "CREATE INDEX IF NOT EXISTS log_entries_user ON log_entries (user_id, ts)",
    "CREATE INDEX IF NOT EXISTS log_entries_ts ON log_entries (ts)",
    """CREATE TABLE IF NOT EXISTS rollup (
        hour DOUBLE PRECISION NOT NULL,
        metric TEXT NOT NULL,
        key TEXT NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (hour, metric, key)
    )""",
)

_INSERT_DECISION = (
    f"INSERT INTO decisions ({', '.join(DECISION_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(DECISION_COLUMNS))}) ON CONFLICT (decision_id) DO NOTHING"
)
_INSERT_REASON = "INSERT INTO decision_reasons (code, ts, decision_id) VALUES (?, ?, ?)"
_INSERT_ENTRY = (
    f"INSERT INTO log_entries ({', '.join(ENTRY_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(ENTRY_COLUMNS))}) ON CONFLICT (entry_id) DO NOTHING"
)
_UPSERT_ROLLUP = (
    "INSERT INTO rollup (hour, metric, key, n) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (hour, metric, key) DO UPDATE SET n = rollup.n + excluded.n"
)
_ERASE = (
    "DELETE FROM log_entries WHERE user_id = ? OR event_id IN "
    "(SELECT event_id FROM decisions WHERE user_id = ?)",
    "DELETE FROM decision_reasons WHERE decision_id IN "
    "(SELECT decision_id FROM decisions WHERE user_id = ?)",
    "DELETE FROM decisions WHERE user_id = ?",
)
_PURGE = (
    "DELETE FROM decision_reasons WHERE ts < ?",
    "DELETE FROM decisions WHERE ts < ?",
    "DELETE FROM log_entries WHERE ts < ?",
    "DELETE FROM rollup WHERE hour < ?",
)

Rollups = dict[tuple[float, str, str], int]


class _Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class DecisionLog:
    """Writes and queries the decision log; thread-safe (a connection per thread)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._postgres = url.startswith(("postgresql://", "postgres://"))
        if not self._postgres:
            if not url.startswith("sqlite:///"):
                raise ConfigurationError(
                    "decision log must be sqlite:///path.db or postgresql://...",
                    field="decision_log",
                )
            self.path: Path | None = Path(url.removeprefix("sqlite:///"))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Private from the first byte; SQLite gives its -wal and -shm the same mode.
            private_file(self.path)
        else:
            self.path = None
        self._local = threading.local()
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        # Calls in flight, so that close() waits for them: closing a connection another
        # thread is using (a retention purge at shutdown) crashes SQLite's C code.
        self._idle = threading.Condition(self._lock)
        self._active = 0
        self._closed = False
        with self._transaction() as cur:
            for statement in SCHEMA:
                cur.execute(self._sql(statement))

    @property
    def kind(self) -> str:
        return "postgresql" if self._postgres else "sqlite"

    # -- connections ------------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self._postgres else statement

    def _connect(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        try:
            if self._postgres:
                import psycopg

                connection = psycopg.connect(self.url, connect_timeout=5)
            else:
                assert self.path is not None
                connection = sqlite3.connect(
                    self.path, timeout=10.0, isolation_level=None, check_same_thread=False
                )
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
                # Erased rows must not linger in free pages.
                connection.execute("PRAGMA secure_delete=ON")
        except Exception as exc:
            raise DecisionLogError(f"decision log {self.redacted} unreachable: {exc}") from exc
        self._local.connection = connection
        with self._lock:
            self._connections.append(connection)
        return connection

    @property
    def redacted(self) -> str:
        if not self._postgres:
            return self.url
        head, _, tail = self.url.partition("@")
        return self.url if not tail else head.split("//")[0] + "//***@" + tail

    @contextmanager
    def _using(self) -> Iterator[None]:
        """Count a call in flight; refuse one once the log is closed."""
        with self._lock:
            if self._closed:
                raise DecisionLogError(f"decision log {self.redacted} is closed")
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                self._idle.notify_all()

    @contextmanager
    def _transaction(self) -> Iterator[_Cursor]:
        with self._using():
            yield from self._in_transaction()

    def _in_transaction(self) -> Iterator[_Cursor]:
        connection = self._connect()
        try:
            if self._postgres:
                with connection.transaction():
                    yield connection.cursor()
            else:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    yield connection.cursor()
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
        except DecisionLogError:
            raise
        except Exception as exc:
            self._drop_connection()
            raise DecisionLogError(f"decision log {self.redacted} failed: {exc}") from exc

    def _query(self, statement: str, params: Sequence[Any]) -> list[Any]:
        with self._using():
            return self._run_query(statement, params)

    def _run_query(self, statement: str, params: Sequence[Any]) -> list[Any]:
        connection = self._connect()
        try:
            if self._postgres:
                with connection.transaction():
                    return list(connection.execute(self._sql(statement), params).fetchall())
            return list(connection.execute(statement, params).fetchall())
        except Exception as exc:
            self._drop_connection()
            raise DecisionLogError(f"decision log {self.redacted} failed: {exc}") from exc

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with self._lock:
                if connection in self._connections:
                    self._connections.remove(connection)
            with suppress(Exception):
                connection.close()

    def close(self) -> None:
        """Close every connection once the calls in flight are done (30 s at most)."""
        with self._lock:
            self._closed = True
            self._idle.wait_for(lambda: self._active == 0, timeout=30.0)
            connections, self._connections = self._connections, []
        for connection in connections:
            with suppress(Exception):
                connection.close()

    # -- writes -----------------------------------------------------------------------

    def write(
        self,
        decisions: Sequence[Sequence[Any]],
        reasons: Sequence[Sequence[Any]],
        entries: Sequence[Sequence[Any]],
        rollups: Rollups,
    ) -> None:
        """One batch, in one transaction: rows (in DECISION_COLUMNS order), reasons, rollups."""
        with self._transaction() as cur:
            if decisions:
                cur.executemany(self._sql(_INSERT_DECISION), decisions)
            if reasons:
                cur.executemany(self._sql(_INSERT_REASON), reasons)
            if entries:
                cur.executemany(self._sql(_INSERT_ENTRY), entries)
            if rollups:
                cur.executemany(
                    self._sql(_UPSERT_ROLLUP),
                    [(hour, metric, key, n) for (hour, metric, key), n in sorted(rollups.items())],
                )

    def erase_user(self, user_id: str) -> int:
        """Delete every row of ``user_id``; returns how many decisions went."""
        with self._transaction() as cur:
            cur.execute(self._sql("SELECT count(*) FROM decisions WHERE user_id = ?"), (user_id,))
            (count,) = cur.fetchall()[0]
            cur.execute(self._sql(_ERASE[0]), (user_id, user_id))
            cur.execute(self._sql(_ERASE[1]), (user_id,))
            cur.execute(self._sql(_ERASE[2]), (user_id,))
        if not self._postgres:
            # The deleted pages must not stay readable in the write-ahead log either.
            with self._using():
                self._connect().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(count)

    def purge(self, older_than: float) -> None:
        """Delete rows and rollups from before ``older_than`` (retention)."""
        hour = older_than - older_than % HOUR_S
        with self._transaction() as cur:
            for statement in _PURGE:
                cur.execute(self._sql(statement), (hour if "rollup" in statement else older_than,))

    # -- queries ----------------------------------------------------------------------

    def decisions(
        self, where: DecisionFilter, *, limit: int = 50, cursor: Cursor | None = None
    ) -> Page:
        """Decisions matching ``where``, newest first, ``limit`` at most."""
        limit = max(1, min(limit, MAX_PAGE))
        if where.reason is not None:
            source = "decision_reasons k JOIN decisions d ON d.decision_id = k.decision_id"
            conditions: list[str] = ["k.code = ?"]
            params: list[Any] = [where.reason]
        else:
            source, conditions, params = "decisions d", [], []
        key = "k" if where.reason is not None else "d"
        for column, value in (
            ("user_id", where.user_id),
            ("decision", where.decision),
            ("action_class", where.action_class),
            ("model_version", where.model_version),
        ):
            if value is not None:
                conditions.append(f"d.{column} = ?")
                params.append(value)
        if where.since is not None:
            conditions.append(f"{key}.ts >= ?")
            params.append(where.since)
        if where.until is not None:
            conditions.append(f"{key}.ts < ?")
            params.append(where.until)
        if cursor is not None:
            conditions.append(f"({key}.ts < ? OR ({key}.ts = ? AND {key}.decision_id < ?))")
            params.extend([cursor.ts, cursor.ts, cursor.decision_id])
        sql = (
            f"SELECT {', '.join('d.' + c for c in DECISION_COLUMNS)} FROM {source}"
            + (f" WHERE {' AND '.join(conditions)}" if conditions else "")
            + f" ORDER BY {key}.ts DESC, {key}.decision_id DESC LIMIT ?"
        )
        rows = self._query(sql, [*params, limit + 1])
        items = [self._decision_dict(row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = Cursor(float(last[1]), str(last[0])).encode()
        return Page(items, next_cursor)

    def decision(self, decision_id: str) -> dict[str, Any] | None:
        rows = self._query(
            f"SELECT {', '.join(DECISION_COLUMNS)} FROM decisions WHERE decision_id = ?",
            [decision_id],
        )
        return self._decision_dict(rows[0]) if rows else None

    def timeline(self, user_id: str, *, limit: int = 50, cursor: Cursor | None = None) -> Page:
        """The user's decisions newest first, each with its step-up results and feedback."""
        page = self.decisions(DecisionFilter(user_id=user_id), limit=limit, cursor=cursor)
        event_ids = [item["event_id"] for item in page.items]
        attached: dict[str, list[dict[str, Any]]] = {}
        if event_ids:
            marks = ", ".join("?" * len(event_ids))
            rows = self._query(
                f"SELECT {', '.join(ENTRY_COLUMNS)} FROM log_entries "
                f"WHERE event_id IN ({marks}) ORDER BY ts",
                event_ids,
            )
            for row in rows:
                entry = dict(zip(ENTRY_COLUMNS, row, strict=True))
                entry["detail"] = orjson.loads(entry["detail"]) if entry["detail"] else {}
                entry["at"] = rfc3339(float(entry.pop("ts")))
                entry.pop("user_id")
                attached.setdefault(entry.pop("event_id"), []).append(entry)
        for item in page.items:
            entries = attached.get(item["event_id"], [])
            item["step_up_results"] = [e for e in entries if e["kind"] == "challenge_result"]
            item["feedback"] = [e for e in entries if e["kind"] == "feedback"]
        return page

    def overview(self, since: float, until: float) -> Overview:
        """Counts for the console's overview over [since, until), from the hourly rollups."""
        first = since - since % HOUR_S
        rows = self._query(
            "SELECT hour, metric, key, n FROM rollup WHERE hour >= ? AND hour < ? ORDER BY hour",
            [first, until],
        )
        out = Overview(since=since, until=until)
        hours: list[float] = []
        hour = first
        while hour < until:
            hours.append(hour)
            hour += HOUR_S
        out.hours = hours
        index = {h: i for i, h in enumerate(hours)}
        reasons: dict[str, int] = {}
        for hour_value, metric, key, n in rows:
            n = int(n)
            if metric == "class":
                action_class, decision = key.split("|", 1)
                series = out.by_class.setdefault(action_class, {}).setdefault(
                    decision, [0] * len(hours)
                )
                series[index[float(hour_value)]] += n
                out.decisions[decision] = out.decisions.get(decision, 0) + n
            elif metric == "score":
                out.score_bins[min(int(key), SCORE_BINS - 1)] += n
            elif metric == "reason":
                reasons[key] = reasons.get(key, 0) + n
            elif metric == "step_up":
                out.step_ups[key] = out.step_ups.get(key, 0) + n
            elif metric == "model":
                out.model_versions[key] = out.model_versions.get(key, 0) + n
            elif metric == "policy":
                out.policy_versions[key] = out.policy_versions.get(key, 0) + n
            elif metric == "shadow":
                out.shadow[key] = out.shadow.get(key, 0) + n
        out.top_reasons = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        return out

    def count(self) -> int:
        return int(self._query("SELECT count(*) FROM decisions", [])[0][0])

    def ping(self) -> None:
        self._query("SELECT 1", [])

    @staticmethod
    def _decision_dict(row: Sequence[Any]) -> dict[str, Any]:
        item = dict(zip(DECISION_COLUMNS, row, strict=True))
        for column in _JSON_COLUMNS:
            value = item[column]
            item[column] = orjson.loads(value) if value else None
        item["timestamp"] = rfc3339(float(item.pop("ts")))
        item["decided_at"] = rfc3339(float(item["decided_at"]))
        item["degraded"] = bool(item["degraded"])
        return item


def open_decision_log(url: str) -> DecisionLog:
    """The decision log at ``url``: ``sqlite:///path.db`` or ``postgresql://...``."""
    return DecisionLog(url)
