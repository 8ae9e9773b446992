"""The audit log: append-only JSON Lines, hash-chained, safe across threads and processes.

Every line is one JSON object carrying ``record`` (its kind), ``ts``, ``prev_hash``
(sha256 of the previous line's bytes; 64 zeros for the first) and, last, ``hash``
(sha256 of the line's own bytes up to that field). Editing a line breaks its own
``hash``; rewriting its hash too breaks the next line's ``prev_hash``.

A decision record keeps in the clear only what is not personal (event id, time,
action, the decision and its versions, reason codes) and the user's random
``ref``; the event's personal fields are sealed under the user's data key
(``sealing.py``), so erasing the user shreds them while every line, and so the
chain, stays as it was. Opened with the keys, a decision record is the event
itself (contract section 1, address truncated, device id and payee as keyed
hashes), so the audit log is also a training input: ``risk_engine.logs`` reads
its decision lines as events (given the keys) and skips the other kinds.

Appends take an exclusive ``flock`` on the file around "read the last line's
hash, append one line": several workers writing one file keep one valid chain.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from risk_engine.decision import Decision
from risk_engine.events import Event
from risk_engine.privacy import Hasher, truncate_ip
from risk_engine.sealing import seal_into

GENESIS = "0" * 64
_TAIL_CHUNK = 8192
# The fixed-length end of every line: ,"hash":"<64 hex>"}
_HASH_SUFFIX_LEN = len(b',"hash":""}') + 64


class RecordKind(StrEnum):
    """The kinds of audit records."""

    DECISION = "decision"
    CHALLENGE_RESULT = "challenge_result"
    FEEDBACK = "feedback"
    ERASURE = "erasure"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _seal(body: dict[str, Any]) -> bytes:
    """The line for ``body`` (which ends with prev_hash) with its own hash appended."""
    head = orjson.dumps(body)
    own = _sha256(head)
    return head[:-1] + b',"hash":"' + own.encode() + b'"}'


def decision_record(
    event: Event, decision: Decision, features: dict[str, float] | None, hasher: Hasher
) -> dict[str, Any]:
    """An audit record of a decision: what is not personal in the clear, the rest sealed.

    The sealed part is the event's personal fields (contract section 1, with the
    address truncated and the device id and payee replaced by keyed hashes), the
    reasons' details and the features, under the user's data key (``sealing.py``),
    so that opened with the key the record is still a valid contract event, and
    erasing the user shreds it. Without a key (the store was unavailable) those
    fields are left out.
    """
    personal: dict[str, Any] = {
        "user_id": event.user_id,
        "ip": truncate_ip(event.ip),
        "success": event.success,
    }
    if event.session_id is not None:
        personal["session_id"] = event.session_id
    if event.device is not None:
        device = event.device.model_dump(exclude_none=True)
        if "id" in device:
            # Keyed and stable: a replay still recognises the device, nobody can read it back.
            device["id"] = "h-" + hasher.digest("device", device["id"])
        personal["device"] = device
    if event.amount is not None:
        personal["amount"] = event.amount
    if event.currency is not None:
        personal["currency"] = event.currency
    if event.payee is not None:
        personal["payee"] = "h-" + hasher.digest("payee", event.payee)
    personal["reasons"] = [r.model_dump() for r in decision.reasons]
    personal["features"] = features
    record: dict[str, Any] = {
        "record": RecordKind.DECISION.value,
        "event_id": event.event_id,
        "timestamp": event.timestamp.isoformat().replace("+00:00", "Z"),
        "action": event.action,
        "decision": decision.decision.value,
        "score": decision.score,
        "reason_codes": [r.code for r in decision.reasons],
        "model_version": decision.model_version,
        "policy_version": decision.policy_version,
        "decision_id": decision.decision_id,
        "action_class": decision.action_class,
        "degraded": decision.degraded,
        "required_acr": decision.required_acr.value if decision.required_acr else None,
        "challenge_id": decision.challenge.id if decision.challenge else None,
        "shadow": decision.shadow,
    }
    seal_personal(record, personal, decision.sealing, RecordKind.DECISION)
    return record


def seal_personal(
    record: dict[str, Any],
    personal: dict[str, Any],
    sealing: tuple[str, str] | None,
    kind: RecordKind,
) -> None:
    """Seal ``personal`` into ``record`` under the user's (ref, key); None: leave it out."""
    if sealing is None:
        record["sealed"] = None
        return
    ref, key = sealing
    seal_into(record, personal, ref, key, kind.value)


class AuditLog:
    """Appends hash-chained records to one JSON Lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        # flock does not exclude threads sharing one descriptor: a lock for them too.
        self._lock = threading.Lock()
        # The file's size and last hash as this process last left them: when the size
        # still matches, no other process appended and the tail need not be re-read.
        self._known_size = -1
        self._last_hash = GENESIS

    def append(self, kind: RecordKind, fields: dict[str, Any]) -> str:
        """Append one record of ``kind``; returns its line hash (the next prev_hash)."""
        body = {k: v for k, v in fields.items() if k not in ("record", "ts", "prev_hash", "hash")}
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                size = os.fstat(self._fd).st_size
                prefix = b""
                if size != self._known_size:
                    prev, torn = self._tail_hash(size)
                    # A torn last line (a crash mid-write) stays, reported by verify.
                    prefix = b"\n" if torn else b""
                else:
                    prev = self._last_hash
                record = {"record": kind.value, "ts": round(time.time(), 6), **body}
                record["prev_hash"] = prev
                line = _seal(record)
                os.write(self._fd, prefix + line + b"\n")
                self._known_size = size + len(prefix) + len(line) + 1
                self._last_hash = _sha256(line)
                return self._last_hash
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _tail_hash(self, size: int) -> tuple[str, bool]:
        """The hash of the last line of a file of ``size`` bytes, and whether it is torn."""
        if size == 0:
            return GENESIS, False
        torn = os.pread(self._fd, 1, size - 1) != b"\n"
        end = size if torn else size - 1  # where the last line's content ends
        start, tail = end, b""
        while True:
            step = min(_TAIL_CHUNK, start)
            start -= step
            tail = os.pread(self._fd, step, start) + tail
            cut = tail.rfind(b"\n", 0, end - start)
            if cut >= 0 or start == 0:
                return _sha256(tail[cut + 1 : end - start]), torn

    def close(self) -> None:
        os.close(self._fd)


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of checking a chain: how many records, and the first broken line."""

    records: int
    broken_line: int | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_line is None


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        yield from enumerate(handle, start=1)


def verify_chain(path: Path) -> VerifyResult:
    """Check every line's own hash and its link to the line before."""
    prev = GENESIS
    count = 0
    for number, raw in _lines(path):
        if not raw.endswith(b"\n"):
            return VerifyResult(count, number, "the line is incomplete (no newline)")
        line = raw[:-1]
        problem = _check_line(line, prev)
        if problem:
            return VerifyResult(count, number, problem)
        prev = _sha256(line)
        count += 1
    return VerifyResult(count)


def _check_line(line: bytes, prev: str) -> str:
    """What is wrong with one line given the previous line's hash ("" when nothing)."""
    if len(line) <= _HASH_SUFFIX_LEN or not line.startswith(b"{"):
        return "not an audit record"
    suffix = line[-_HASH_SUFFIX_LEN:]
    if not (suffix.startswith(b',"hash":"') and suffix.endswith(b'"}')):
        return "the record does not end with its hash"
    head = line[:-_HASH_SUFFIX_LEN] + b"}"
    if _sha256(head) != suffix[9:-2].decode(errors="replace"):
        return "the record's content does not match its hash (edited)"
    try:
        record = orjson.loads(head)
    except orjson.JSONDecodeError:
        return "not valid JSON"
    if not isinstance(record, dict) or record.get("prev_hash") != prev:
        return "prev_hash does not match the previous line (a line was removed or changed)"
    return ""
