"""The audit log's writer: records leave the request path and reach the file in order.

A request hands its record to ``AuditWriter.submit`` and goes on; one thread per
process appends what was handed to it, in the order it was handed, in batches:
one lock, one look at the file and one write per batch (``AuditLog.append_many``),
each line chained from the one before it. What is not on disk yet is bounded twice:

* in records: at most ``max_records`` are queued or being written; a request that
  finds the queue full waits for room (back-pressure), so nothing is dropped;
* in time: a batch is written once its oldest record is ``max_delay_s`` old (or
  at once when the queue is full, on ``flush`` and on ``close``), so a record
  waits that long (or the write of the batch before it, if longer) plus the
  write of its own batch.

A crash of the process (kill -9) loses at most those records (a power cut, also
what the OS had not yet written: the log is never fsynced, in either mode); the
file stays a valid chain, since a batch cut mid-write is a torn last line that the
next opening of the log recovers. A failing disk loses the batch's records: they
are counted (``on_lost``) and logged, never raised to the request. ``flush``
returns once everything handed in before it is written; ``close`` drains the
queue, stops the thread and closes the log. ``max_records=0`` writes each record
in the caller's thread before ``submit`` returns (the synchronous mode).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

from risk_engine.audit import AuditLog, RecordKind, ShortWriteError
from risk_engine.errors import ConfigurationError

log = logging.getLogger("risk_engine.audit")

# How long close() waits for the thread to write what is queued.
CLOSE_TIMEOUT_S = 30.0

# A record's fields, or what makes them (called on the writer thread).
Fields = dict[str, Any] | Callable[[], dict[str, Any]]
_Record = tuple[RecordKind, Fields, float]


class AuditWriter:
    """Appends audit records to ``audit_log`` from a thread of its own (see the module docstring).

    ``on_lost`` is called with the number of records that could not be written.
    """

    def __init__(
        self,
        audit_log: AuditLog,
        *,
        max_records: int,
        max_delay_s: float,
        on_lost: Callable[[int], None] = lambda n: None,
    ) -> None:
        if max_records < 0 or not 0 < max_delay_s <= 1:
            raise ConfigurationError(
                f"the audit queue needs max_records >= 0 and 0 < max_delay_s <= 1,"
                f" got {max_records!r} and {max_delay_s!r}",
                field="audit_queue_records",
            )
        self.log = audit_log
        self.max_records = max_records
        self.max_delay_s = max_delay_s
        self._on_lost = on_lost
        # Records in the order handed in, and flush markers among them (set once
        # everything before them is written).
        self._queue: deque[_Record | threading.Event] = deque()
        # One slot per record queued or being written: the back-pressure.
        self._room = threading.Semaphore(max_records)
        # Set when the queue gains its first record; the thread sleeps on it when idle.
        self._wake = threading.Event()
        # Set to cut the batching wait short: the queue is full, a flush, close.
        self._urge = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        if max_records:
            self._thread = threading.Thread(
                target=self._run, name="risk-engine-audit-writer", daemon=True
            )
            self._thread.start()

    @property
    def asynchronous(self) -> bool:
        return self._thread is not None

    def submit(self, kind: RecordKind, fields: Fields) -> None:
        """Hand in one record; written in order, after every record handed in before it.

        ``fields`` is the writer's from now on: the caller must not change it, nor
        what a function given instead reads (it runs on the writer thread). Waits
        while ``max_records`` are not yet written (synchronous mode: writes it now).
        """
        if self._closed:
            self._lose([kind], OSError(f"the audit log {self.log.path} is closed"))
            return
        if self._thread is None:
            self._append([(kind, fields, 0.0)])
            return
        if not self._room.acquire(blocking=False):
            self._urge.set()
            self._room.acquire()
        self._queue.append((kind, fields, time.monotonic()))
        if not self._wake.is_set():  # set() takes the event's lock: skip it when set
            self._wake.set()

    def flush(self, timeout: float | None = CLOSE_TIMEOUT_S) -> bool:
        """Wait until every record handed in before this call is written or lost; False: timeout."""
        if self._thread is None or self._closed or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._queue.append(done)
        self._urge.set()
        self._wake.set()
        return done.wait(timeout)

    def expire(self, horizon: float) -> list[str]:
        """``AuditLog.expire``: it takes the log's lock, so it falls between two batches."""
        return self.log.expire(horizon)

    def close(self) -> None:
        """Write what is queued, stop the thread and close the log."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._urge.set()
            self._wake.set()
            self._thread.join(CLOSE_TIMEOUT_S)
            if self._thread.is_alive():
                log.error(
                    "audit log %s: the writer did not finish within %.0f s; records still"
                    " queued are lost",
                    self.log.path,
                    CLOSE_TIMEOUT_S,
                )
                return  # the thread still uses the file
            # Handed in while closing, after the thread's last look: written here.
            self._append([item for item in self._queue if not isinstance(item, threading.Event)])
            self._queue.clear()
        self.log.close()

    # -- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        queue = self._queue
        while True:
            self._wake.wait()
            if queue and not self._closed:
                first = queue[0]
                if not isinstance(first, threading.Event):
                    # The oldest record sets the batch's deadline, not when this thread woke.
                    wait = first[2] + self.max_delay_s - time.monotonic()
                    if wait > 0:
                        self._urge.wait(wait)
            self._urge.clear()
            # Cleared before the queue is emptied: a record handed in meanwhile sets it again.
            self._wake.clear()
            batch: list[_Record] = []
            while queue:
                item = queue.popleft()
                if isinstance(item, threading.Event):
                    self._write(batch)
                    batch = []
                    item.set()
                else:
                    batch.append(item)
            self._write(batch)
            if self._closed and not queue:
                return

    def _write(self, batch: Sequence[_Record]) -> None:
        """Append a batch the thread took from the queue, and free its records' room."""
        if batch:
            self._append(batch)
            self._room.release(len(batch))

    def _append(self, batch: Sequence[_Record]) -> None:
        """Append ``batch``; what fails is counted and logged, never raised."""
        if not batch:
            return
        try:
            self.log.append_many(
                [(kind, fields() if callable(fields) else fields) for kind, fields, _ in batch]
            )
        except ShortWriteError as exc:
            self._lose([kind for kind, _, _ in batch[exc.records :]], exc)
        except OSError as exc:
            self._lose([kind for kind, _, _ in batch], exc)
        except Exception as exc:
            # A record that cannot be sealed (a bug) must not take the others with it.
            if len(batch) == 1:
                log.exception("audit record %s not written to %s", batch[0][0], self.log.path)
                self._lose([batch[0][0]], exc, logged=True)
            else:
                for record in batch:
                    self._append([record])

    def _lose(self, kinds: Sequence[RecordKind], exc: Exception, *, logged: bool = False) -> None:
        if not kinds:
            return
        self._on_lost(len(kinds))
        if not logged:
            counts = ", ".join(f"{kind} x{n}" for kind, n in Counter(kinds).items())
            log.error("audit records not written to %s (%s): %s", self.log.path, counts, exc)
