"""The decision log written by a process of its own, so that it never takes the server's GIL.

A writer thread inside the server competes with the event loop for the
interpreter lock: whenever the loop waits on a socket or the profile store, the
writer takes the lock and keeps it for a whole switch interval, and the
decision path pays that wait. So the server sends the records, serialised once
with orjson, as messages on a Unix ``SOCK_SEQPACKET`` socket (message
boundaries kept, a send is all or nothing) to a child process that runs the
ordinary ``DecisionLogWriter``. A send never blocks: when the socket is full the
record waits in a bounded backlog that the next send or a flush empties, and
past that bound it is dropped and counted. If the child dies, records are
dropped and counted and a new child is started (at most one start every few
seconds). Queries, erasure and retention run on the server's own connection;
an erasure first flushes what is in flight, so no row of the user is written
after it.

Decisions are sent in batches (``BATCH_RECORDS``, or every ``PENDING_FLUSH_S`` by
the server's tick), one message each. What a crash can lose: a killed server
loses the batch it was gathering, its backlog and what the child has not yet
committed (the child's batch interval); a killed child loses its current batch.
The audit chain still holds every decision.

The child is ``python -m risk_engine.decision_log``; it reads its
configuration (log URL, GeoIP files, the secret for device keys) as one JSON
line on standard input, never from its command line, and lowers its own CPU
priority: under load, decisions come first.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Unpack

import orjson

from risk_engine.decision import Decision
from risk_engine.decision_log.entries import LogEntry
from risk_engine.decision_log.sql import DecisionLog, open_decision_log
from risk_engine.decision_log.writer import (
    MAX_QUEUE,
    DecisionLogWriter,
    EntryFields,
    decision_record,
    entry_record,
)
from risk_engine.errors import ConfigurationError
from risk_engine.events import Event
from risk_engine.geo import GeoLocator
from risk_engine.privacy import Hasher

log = logging.getLogger("risk_engine.decision_log")

# Message kinds (first byte): decisions (a JSON array of records), an entry row, a
# flush and its answer, stop.
DECISIONS, ENTRY, FLUSH, STOP = b"B", b"E", b"F", b"Q"
# Decisions are sent in batches of up to this many records (or bytes): one send and
# one decode per batch instead of per decision. A batch not full is sent by the
# server's flush tick (``flush_pending``), by the next entry or flush.
BATCH_RECORDS = 64
BATCH_BYTES = 64 << 10
# How often the server sends a batch that is not full (api.app's lifespan).
PENDING_FLUSH_S = 0.05
# Larger than any record: features, reasons and a device at their field limits.
MAX_MESSAGE = 1 << 20
SEND_BUFFER = 4 << 20
RESTART_INTERVAL_S = 5.0
CHILD_NICE = 5


@dataclass(frozen=True)
class ChildConfig:
    """What the child needs to build rows: where the log is, GeoIP files, the device-key secret."""

    url: str
    secret: str
    city_db: str | None = None
    asn_db: str | None = None
    anonymous_db: str | None = None

    def encode(self) -> bytes:
        return orjson.dumps(self.__dict__) + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> ChildConfig:
        return cls(**orjson.loads(line))


class DecisionLogProcess:
    """The server's decision log: rows written by a child process; reads on ``self.log``."""

    def __init__(
        self,
        log_: DecisionLog,
        config: ChildConfig,
        *,
        max_backlog: int = MAX_QUEUE,
        restart_interval_s: float = RESTART_INTERVAL_S,
    ) -> None:
        self.log = log_
        self._config = config
        self._max_backlog = max_backlog
        self._restart_interval_s = restart_interval_s
        # Messages the socket had no room for, with how many records each holds.
        self._backlog: deque[tuple[bytes, int]] = deque()
        self._backlog_records = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._flushes = 0
        self.dropped = 0

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._child.pid if self._alive() and self._child is not None else None

    # -- the request side -------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._child is None:
                self._spawn()

    def decision(self, event: Event, decision: Decision) -> None:
        """Queue one decision for the next batch: a serialisation, a send per batch."""
        record = orjson.dumps(decision_record(event, decision, time.time()))
        with self._lock:
            self._pending.append(record)
            self._pending_bytes += len(record)
            if len(self._pending) >= BATCH_RECORDS or self._pending_bytes >= BATCH_BYTES:
                self._send_pending()

    def entry(self, kind: LogEntry, **fields: Unpack[EntryFields]) -> None:
        """Send a step-up result, a feedback or an erasure (after the decisions before it)."""
        message = ENTRY + orjson.dumps(entry_record(kind, **fields))
        with self._lock:
            self._send_pending()
            self._send(message, 1)

    def flush_pending(self) -> None:
        """Send the batch being gathered, if any (the server calls this every few ms)."""
        if self._pending:
            with self._lock:
                self._send_pending()

    def _send_pending(self) -> None:
        if self._pending:
            batch, self._pending, self._pending_bytes = self._pending, [], 0
            self._send(DECISIONS + b"[" + b",".join(batch) + b"]", len(batch))

    def _send(self, message: bytes, records: int) -> None:
        """Send ``message`` of ``records`` records now, or keep it in the backlog (lock held)."""
        if not self._alive() and not self._respawn():
            self._drop(records)
            return
        if self._backlog:
            self._send_backlog()
        if self._backlog:
            self._queue(message, records)
            return
        try:
            assert self._sock is not None
            self._sock.send(message)
        except BlockingIOError:
            self._queue(message, records)
        except OSError as exc:
            if exc.errno != errno.EMSGSIZE:
                self._lost(exc)
            self._drop(records)

    def _queue(self, message: bytes, records: int) -> None:
        if self._backlog_records + records <= self._max_backlog:
            self._backlog.append((message, records))
            self._backlog_records += records
        else:
            self._drop(records)

    def _send_backlog(self) -> None:
        assert self._sock is not None
        try:
            while self._backlog:
                message, records = self._backlog[0]
                self._sock.send(message)
                self._backlog.popleft()
                self._backlog_records -= records
        except BlockingIOError:
            pass
        except OSError as exc:
            self._lost(exc)
            self._drop(self._backlog_records)
            self._clear_backlog()

    def _clear_backlog(self) -> None:
        self._backlog.clear()
        self._backlog_records = 0

    def _take_backlog(self) -> list[bytes]:
        """The backlog's messages, and the batch being gathered as one more (lock held)."""
        messages = [message for message, _ in self._backlog]
        if self._pending:
            messages.append(DECISIONS + b"[" + b",".join(self._pending) + b"]")
            self._pending, self._pending_bytes = [], 0
        return messages

    def _drop(self, n: int) -> None:
        before = self.dropped
        self.dropped += n
        if before == 0 or before // 10_000 != self.dropped // 10_000:
            log.warning("decision log: %d records dropped so far", self.dropped)

    # -- flush, erasure, close --------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything sent before this call is committed by the child."""
        deadline = time.monotonic() + timeout
        with self._flush_lock:
            with self._lock:
                if not self._alive() and not (self._pending and self._respawn()):
                    return False
                self._flushes += 1
                token = FLUSH + str(self._flushes).encode()
                if not self._send_all([*self._take_backlog(), token], deadline):
                    return False
                self._clear_backlog()
            return self._await(token, deadline)

    def erase_user(self, user_id: str) -> int:
        """Commit what is in flight, then delete every row of ``user_id``."""
        self.flush()
        return self.log.erase_user(user_id)

    def close(self) -> None:
        with self._flush_lock, self._lock:
            child, sock = self._child, self._sock
            if child is not None and sock is not None and child.poll() is None:
                deadline = time.monotonic() + 30.0
                if self._send_all([*self._take_backlog(), STOP], deadline):
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        child.wait(timeout=max(0.1, deadline - time.monotonic()))
            if child is not None and child.poll() is None:
                child.kill()
                child.wait(timeout=10)
            if sock is not None:
                sock.close()
            self._child = self._sock = None
            self._clear_backlog()
        self.log.close()

    def _send_all(self, messages: list[bytes], deadline: float) -> bool:
        """Send ``messages`` in order, waiting for room until ``deadline``."""
        assert self._sock is not None
        for message in messages:
            while True:
                try:
                    self._sock.send(message)
                    break
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    select.select([], [self._sock], [], left)
                except OSError as exc:
                    self._lost(exc)
                    return False
        return True

    def _await(self, token: bytes, deadline: float) -> bool:
        sock = self._sock
        while sock is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            readable, _, _ = select.select([sock], [], [], left)
            if not readable:
                return False
            try:
                answer = sock.recv(64)
            except BlockingIOError:
                continue
            except OSError:
                return False
            if not answer:
                return False
            if answer == token:
                return True
        return False

    # -- the child --------------------------------------------------------------------

    def _alive(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def _respawn(self) -> bool:
        if time.monotonic() - self._started_at < self._restart_interval_s:
            return False
        if self._child is not None:
            log.error("decision log writer exited (%s): starting another", self._child.returncode)
        try:
            self._spawn()
        except (ConfigurationError, OSError) as exc:
            # On the request path: the decision goes on, its record is dropped and counted.
            log.error("decision log writer not restarted: %s", exc)
            return False
        return True

    def _spawn(self) -> None:
        if self._sock is not None:
            self._sock.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for sock in (ours, theirs):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SEND_BUFFER)
        ours.setblocking(False)
        self._started_at = time.monotonic()
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "risk_engine.decision_log", str(theirs.fileno())],
                stdin=subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
                close_fds=True,
            )
        except OSError as exc:
            ours.close()
            raise ConfigurationError(f"cannot start the decision log writer: {exc}") from exc
        finally:
            theirs.close()
        assert child.stdin is not None
        child.stdin.write(self._config.encode())
        child.stdin.close()
        self._child, self._sock = child, ours

    def _lost(self, exc: OSError) -> None:
        log.error("decision log writer unreachable: %s", exc)
        if self._child is not None and self._child.poll() is None:
            self._child.kill()
            self._child.wait(timeout=10)


def open_decision_log_writer(
    url: str, *, writer: str, geo: GeoLocator, hasher: Hasher
) -> DecisionLogWriter | DecisionLogProcess:
    """The server's decision log: in a child process (``process``) or a thread (``thread``).

    Either way the rows carry the same places and the same device keys as the
    engine's own (same GeoIP files, same secret).
    """
    if writer == "thread":
        return DecisionLogWriter(
            open_decision_log(url),
            locate=geo.lookup,
            device_key=lambda device_id: "id:" + hasher.digest("device", device_id),
        )
    config = ChildConfig(
        url=url,
        secret=hasher.secret,
        city_db=str(geo.city_path),
        asn_db=str(geo.asn_path) if geo.asn_path else None,
        anonymous_db=str(geo.anonymous_path) if geo.anonymous_path else None,
    )
    return DecisionLogProcess(open_decision_log(url), config)


def child_main(fd: int, config: ChildConfig) -> int:
    """The child: receive records on ``fd`` and write them with a ``DecisionLogWriter``.

    It lives exactly as long as its socket: signals meant for the server's process
    group (Ctrl-C, a service manager's SIGTERM) are ignored, and the server's exit
    closes the socket, which ends the loop after the last batch is written.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICE)
    geo = None
    if config.city_db is not None:
        geo = GeoLocator(
            Path(config.city_db),
            asn_db=Path(config.asn_db) if config.asn_db else None,
            anonymous_db=Path(config.anonymous_db) if config.anonymous_db else None,
        )
    hasher = Hasher(config.secret)
    writer = DecisionLogWriter(
        open_decision_log(config.url),
        locate=geo.lookup if geo is not None else None,
        device_key=lambda device_id: "id:" + hasher.digest("device", device_id),
    )
    writer.start()
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    try:
        while True:
            message = sock.recv(MAX_MESSAGE)
            if not message or message == STOP:
                break
            kind = message[:1]
            try:
                if kind == DECISIONS:
                    for record in orjson.loads(message[1:]):
                        writer.put_decision(record)
                elif kind == ENTRY:
                    writer.put_entry(orjson.loads(message[1:]))
                elif kind == FLUSH:
                    writer.flush()
                    sock.send(message)
            except orjson.JSONDecodeError as exc:
                log.error("decision log: a record that is not JSON was skipped: %s", exc)
    finally:
        writer.close()
        sock.close()
    return 0


def main() -> int:
    config = ChildConfig.decode(sys.stdin.buffer.readline())
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return child_main(int(sys.argv[1]), config)
