"""The decision log's writer: off the request path, in batches, never blocking a request.

A decision becomes a record (``decision_record``: plain values, the same whether
it stays in this process or is sent to another) on a bounded queue; a thread of
its own builds the rows (GeoIP place, device summary), keeps the hourly rollups
and writes a batch per transaction. The server runs this writer in a process of
its own (``process.DecisionLogProcess``), so that none of this takes the event
loop's interpreter lock; in-process it serves tools, tests and the ``thread``
setting. When the log cannot keep up or fails, records are dropped and counted,
never the decision: the audit chain holds every one of them all the same.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, TypedDict, Unpack

import orjson

from risk_engine.decision import Decision
from risk_engine.decision_log.entries import LogEntry, score_bin
from risk_engine.decision_log.sql import HOUR_S, DecisionLog, Rollups
from risk_engine.errors import RiskEngineError
from risk_engine.events import Event
from risk_engine.geo import IPAddress, Location
from risk_engine.privacy import truncate_ip
from risk_engine.useragent import parse_user_agent

log = logging.getLogger("risk_engine.decision_log")

MAX_QUEUE = 100_000
MAX_BATCH = 5_000
# The writer wakes this often, not once a decision: each wake-up takes the GIL from
# the event loop, and a thread woken per request cost the service about half its
# throughput (bench_http.py --decision-log-compare).
BATCH_INTERVAL_S = 0.25


@dataclass(frozen=True)
class _Flush:
    done: threading.Event


def decision_record(event: Event, decision: Decision, decided_at: float) -> list[Any]:
    """What the log keeps of one decision, as plain values (JSON-able, cheap to send).

    The place and the device summary are left to the writer: they cost a GeoIP
    lookup, a user-agent parse and a keyed hash, none of which a request should pay.
    """
    device = event.device
    return [
        decision.decision_id,
        event.timestamp.timestamp(),
        decided_at,
        event.event_id,
        event.user_id,
        event.session_id,
        event.action,
        decision.action_class,
        decision.decision.value,
        decision.score,
        decision.required_acr.value if decision.required_acr else None,
        decision.challenge.id if decision.challenge else None,
        decision.model_version,
        decision.policy_version,
        int(decision.degraded),
        [[r.code, r.detail] for r in decision.reasons],
        str(event.ip),
        None
        if device is None
        else [
            device.id,
            device.user_agent,
            device.platform,
            device.timezone,
            device.language,
            device.screen,
        ],
        event.amount,
        event.currency,
        decision.features,
        decision.shadow,
    ]


class EntryFields(TypedDict, total=False):
    """What a step-up result, a feedback or an erasure records (``ts``: default now)."""

    event_id: str | None
    user_id: str | None
    challenge_id: str | None
    outcome: str | None
    detail: dict[str, Any] | None
    ts: float | None


def entry_record(kind: LogEntry, **fields: Unpack[EntryFields]) -> list[Any]:
    """The row of a step-up result, a feedback or an erasure."""
    ts, detail = fields.get("ts"), fields.get("detail")
    return [
        secrets.token_hex(12),
        kind.value,
        time.time() if ts is None else ts,
        fields.get("user_id"),
        fields.get("event_id"),
        fields.get("challenge_id"),
        fields.get("outcome"),
        orjson.dumps(detail).decode() if detail else None,
    ]


class DecisionLogWriter:
    """Queues decisions and entries for ``log`` and writes them from a thread of its own."""

    def __init__(
        self,
        log_: DecisionLog,
        *,
        locate: Callable[[IPAddress], Location] | None = None,
        device_key: Callable[[str], str] | None = None,
        max_queue: int = MAX_QUEUE,
    ) -> None:
        self.log = log_
        self._locate = locate
        self._device_key = device_key
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._wake = threading.Event()
        self.dropped = 0
        self.failed = 0
        self.written = 0
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    # -- the request side -------------------------------------------------------------

    def decision(self, event: Event, decision: Decision) -> None:
        """Queue one decision."""
        self.put_decision(decision_record(event, decision, time.time()))

    def flush_pending(self) -> None:
        """Nothing to do: each decision is queued at once (``process`` batches its sends)."""

    def put_decision(self, record: list[Any]) -> None:
        """Queue one ``decision_record``."""
        self._put(("decision", record))

    def put_entry(self, row: list[Any]) -> None:
        """Queue one ``entry_record``."""
        self._put(("entry", row))

    def entry(self, kind: LogEntry, **fields: Unpack[EntryFields]) -> None:
        """Queue a step-up result, a feedback or an erasure."""
        self.put_entry(entry_record(kind, **fields))

    def _put(self, item: Any) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 10_000 == 0:
                log.warning("decision log queue full: %d records dropped so far", self.dropped)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued before this call is written (tests, erasure, close)."""
        if not self._started:
            self._drain_now()
            return True
        marker = _Flush(threading.Event())
        self._queue.put(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def erase_user(self, user_id: str) -> int:
        """Write what is queued, then delete every row of ``user_id``."""
        self.flush()
        return self.log.erase_user(user_id)

    def close(self) -> None:
        if self._started:
            self._queue.put(None)
            self._wake.set()
            self._thread.join(timeout=30)
        else:
            self._drain_now()
        self.log.close()

    # -- the writer thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is not None and not isinstance(first, _Flush):
                # Let the batch gather (a flush or close cuts the wait short).
                self._wake.wait(BATCH_INTERVAL_S)
            self._wake.clear()
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if not self._write(batch):
                return

    def _drain_now(self) -> None:
        batch = []
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._write(batch)

    def _write(self, batch: list[Any]) -> bool:
        """Write ``batch``; False once the stop marker is in it."""
        decisions: list[tuple[Any, ...]] = []
        reasons: list[tuple[Any, ...]] = []
        entries: list[tuple[Any, ...]] = []
        rollups: Rollups = {}
        markers: list[_Flush] = []
        stop = False
        for item in batch:
            if item is None:
                stop = True
            elif isinstance(item, _Flush):
                markers.append(item)
            elif item[0] == "decision":
                record = item[1]
                decisions.append(self._decision_row(record))
                ts, decision_id = record[1], record[0]
                reasons.extend((code, ts, decision_id) for code, _ in record[15])
                _roll_decision(rollups, record)
            else:
                row = tuple(item[1])
                entries.append(row)
                if row[1] == LogEntry.CHALLENGE_RESULT.value and row[6]:
                    _bump(rollups, row[2], "step_up", row[6])
        if decisions or entries:
            try:
                self.log.write(decisions, reasons, entries, rollups)
                self.written += len(decisions) + len(entries)
            except RiskEngineError as exc:
                self.failed += len(decisions) + len(entries)
                log.error("decision log: %d records not written: %s", len(batch), exc.message)
        for marker in markers:
            marker.done.set()
        return not stop

    def _decision_row(self, record: list[Any]) -> tuple[Any, ...]:
        """The row of a ``decision_record``: its values, the place and the device summary."""
        ip = ip_address(record[16])
        location: Location | None = None
        if self._locate is not None:
            try:
                location = self._locate(ip)
            except Exception:
                location = None
        device = None
        if record[17] is not None:
            device_id, user_agent, platform, timezone, language, screen = record[17]
            device = {
                "key": self._device_key(device_id) if (device_id and self._device_key) else None,
                "label": parse_user_agent(user_agent).label if user_agent else None,
                "platform": platform,
                "timezone": timezone,
                "language": language,
                "screen": screen,
            }
        features, shadow = record[20], record[21]
        return (
            *record[:15],
            orjson.dumps([{"code": c, "detail": d} for c, d in record[15]]).decode(),
            truncate_ip(ip),
            location.country if location else None,
            location.city if location else None,
            location.latitude if location else None,
            location.longitude if location else None,
            orjson.dumps(device).decode() if device else None,
            record[18],
            record[19],
            orjson.dumps(features).decode() if features else None,
            orjson.dumps(shadow).decode() if shadow else None,
        )


def _bump(rollups: Rollups, ts: float, metric: str, key: str) -> None:
    hour = ts - ts % HOUR_S
    rollups[(hour, metric, key)] = rollups.get((hour, metric, key), 0) + 1


def _roll_decision(rollups: Rollups, record: list[Any]) -> None:
    ts, action_class, outcome, score = record[1], record[7], record[8], record[9]
    _bump(rollups, ts, "class", f"{action_class}|{outcome}")
    _bump(rollups, ts, "score", str(score_bin(score)))
    _bump(rollups, ts, "model", record[12])
    _bump(rollups, ts, "policy", record[13])
    for code, _ in record[15]:
        _bump(rollups, ts, "reason", code)
    if record[11] is not None:  # the challenge's id: one was issued
        _bump(rollups, ts, "step_up", "issued")
    shadow = record[21]
    if shadow:
        agree = shadow.get("decision") == outcome
        _bump(rollups, ts, "shadow", "agree" if agree else "disagree")
