"""The decision log's writer: off the request path, in batches, never blocking a request.

A request only puts a reference to its event and decision on a bounded queue (a
microsecond); a thread of its own builds the rows (GeoIP place, device summary),
keeps the hourly rollups and writes a batch per transaction. When the log
cannot keep up or fails, records are dropped and counted, never the decision:
the audit chain holds every one of them all the same.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from risk_engine.decision import Decision
from risk_engine.decision_log.entries import LogEntry, score_bin
from risk_engine.decision_log.sql import HOUR_S, DecisionLog, Rollups
from risk_engine.errors import RiskEngineError
from risk_engine.events import Event
from risk_engine.geo import Location
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


class DecisionLogWriter:
    """Queues decisions and entries for ``log`` and writes them from a thread of its own."""

    def __init__(
        self,
        log_: DecisionLog,
        *,
        locate: Callable[[Event], Location] | None = None,
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
        """Queue one decision (what the request path pays: one queue put)."""
        self._put(("decision", event, decision, time.time()))

    def entry(
        self,
        kind: LogEntry,
        *,
        event_id: str | None = None,
        user_id: str | None = None,
        challenge_id: str | None = None,
        outcome: str | None = None,
        detail: dict[str, Any] | None = None,
        ts: float | None = None,
    ) -> None:
        """Queue a step-up result, a feedback or an erasure (at ``ts``, default now)."""
        row = (
            secrets.token_hex(12),
            kind.value,
            time.time() if ts is None else ts,
            user_id,
            event_id,
            challenge_id,
            outcome,
            orjson.dumps(detail).decode() if detail else None,
        )
        self._put(("entry", row))

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
                _, event, decision, decided_at = item
                row = self._decision_row(event, decision, decided_at)
                decisions.append(row)
                ts = row[1]
                reasons.extend((r.code, ts, decision.decision_id) for r in decision.reasons)
                _roll_decision(rollups, ts, decision)
            else:
                row = item[1]
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

    def _decision_row(self, event: Event, decision: Decision, decided_at: float) -> tuple[Any, ...]:
        location: Location | None = None
        if self._locate is not None:
            try:
                location = self._locate(event)
            except Exception:
                location = None
        device = None
        if event.device is not None:
            d = event.device
            device = {
                "key": self._device_key(d.id) if (d.id and self._device_key) else None,
                "label": parse_user_agent(d.user_agent).label if d.user_agent else None,
                "platform": d.platform,
                "timezone": d.timezone,
                "language": d.language,
                "screen": d.screen,
            }
        shadow = decision.shadow
        return (
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
            orjson.dumps([{"code": r.code, "detail": r.detail} for r in decision.reasons]).decode(),
            truncate_ip(event.ip),
            location.country if location else None,
            location.city if location else None,
            location.latitude if location else None,
            location.longitude if location else None,
            orjson.dumps(device).decode() if device else None,
            event.amount,
            event.currency,
            orjson.dumps(decision.features).decode() if decision.features else None,
            orjson.dumps(shadow).decode() if shadow else None,
        )


def _bump(rollups: Rollups, ts: float, metric: str, key: str) -> None:
    hour = ts - ts % HOUR_S
    rollups[(hour, metric, key)] = rollups.get((hour, metric, key), 0) + 1


def _roll_decision(rollups: Rollups, ts: float, decision: Decision) -> None:
    _bump(rollups, ts, "class", f"{decision.action_class}|{decision.decision.value}")
    _bump(rollups, ts, "score", str(score_bin(decision.score)))
    _bump(rollups, ts, "model", decision.model_version)
    _bump(rollups, ts, "policy", decision.policy_version)
    for reason in decision.reasons:
        _bump(rollups, ts, "reason", reason.code)
    if decision.challenge is not None:
        _bump(rollups, ts, "step_up", "issued")
    if decision.shadow:
        agree = decision.shadow.get("decision") == decision.decision.value
        _bump(rollups, ts, "shadow", "agree" if agree else "disagree")
