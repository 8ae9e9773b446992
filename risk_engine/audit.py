"""The audit log: append-only JSON Lines, chained under a key, safe across threads and processes.

Every line is one JSON object carrying ``record`` (its kind), ``ts``, ``key_id`` (the
public id of the audit key that sealed it), ``prev_hash`` (the previous record's
``hmac``; 64 zeros for the first) and, last, ``hmac``: HMAC-SHA256 under the audit key
of the line's bytes up to that field. Editing a line breaks its own ``hmac``, and
without the key nobody can compute a new one; removing or inserting a line breaks the
next line's ``prev_hash``. (The unkeyed sha256 chain of earlier versions could be
recomputed by anyone able to write the file.)

A crash mid-write leaves a torn last line. The log looks for one when it opens
(start-up) and whenever another process changed the file: it logs a warning, ends the
torn bytes with a newline and appends a ``recovery`` record naming them (offset, length,
sha256), chained from the last complete record. ``verify_chain`` reports every break
and goes on, so neither a torn line nor an edit hides a later one.

Lines of the unkeyed chain (``hash`` where ``hmac`` is now, ``prev_hash`` the sha256 of
the previous line) are legacy: verified by the old rules, and trusted only when the
first keyed record chains from them (the log writes a ``migration`` record when it opens
a file that ends with them), since that record's hmac then covers all of them.

A decision record keeps in the clear only what is not personal (event id, time,
action, the decision and its versions, reason codes) and the user's random
``ref``; the event's personal fields are sealed under the user's data key
(``sealing.py``), so erasing the user shreds them while every line, and so the
chain, stays as it was. Opened with the keys, a decision record is the event
itself (contract section 1, address truncated, device id and payee as keyed
hashes), so the audit log is also a training input: ``risk_engine.offline.logs`` reads
its decision lines as events (given the keys) and skips the other kinds.

Appends take an exclusive ``flock`` on the file around "read the last line's
hmac, append one line" (or a batch of lines, each chained from the one before,
in one write: ``append_many``, which the service's writer thread uses,
``audit_writer.py``): several workers writing one file keep one valid chain. A
batch cut short by a crash is a torn last line like any other.

Rotation: past a size or at a new UTC day, the file is closed as the next numbered
segment beside it (``audit.jsonl`` -> ``audit.000042.jsonl``) and a new file starts
with a ``segment`` record that names that segment and chains from its last record,
so the segments form one chain. The new file is written aside and renamed over the
log's path under the old file's lock: the path always names a whole log, and a
worker that waited for the lock finds the file moved and takes up the new one.
``expire`` deletes the oldest segments past retention and first appends a
``retention`` record naming them and the hmac of the oldest kept file's first
record: ``verify_segments`` then accepts the chain starting there, and reports any
other missing, extra or reordered segment as a break.
"""

from __future__ import annotations

import bisect
import fcntl
import glob
import hashlib
import hmac
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from risk_engine.decision import Decision
from risk_engine.errors import ConfigurationError
from risk_engine.events import Event
from risk_engine.privacy import Hasher, truncate_ip
from risk_engine.sealing import seal_into

log = logging.getLogger("risk_engine.audit")

GENESIS = "0" * 64
MIN_KEY_CHARS = 32
_TAIL_CHUNK = 8192
_MAC_FIELD = b',"hmac":"'
_LEGACY_FIELD = b',"hash":"'
# The fixed-length end of every line: ,"hmac":"<64 hex>"} (legacy lines: "hash", as long)
_SUFFIX_LEN = len(_MAC_FIELD) + 64 + 2
_RESERVED = frozenset(("record", "ts", "key_id", "prev_hash", "hmac", "hash"))
SEGMENT_DIGITS = 6
DAY_S = 86400


class RecordKind(StrEnum):
    """The kinds of audit records."""

    DECISION = "decision"
    CHALLENGE_RESULT = "challenge_result"
    FEEDBACK = "feedback"
    ERASURE = "erasure"
    DEVICE_UNTRUSTED = "device_untrusted"
    CONSOLE = "console"
    RECOVERY = "recovery"
    MIGRATION = "migration"
    SEGMENT = "segment"
    RETENTION = "retention"


class ShortWriteError(OSError):
    """A write of audit lines cut short (a full disk): ``records`` whole lines reached the file."""

    def __init__(self, message: str, records: int) -> None:
        super().__init__(message)
        self.records = records


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class AuditKey:
    """A key that seals audit records, and its public id (records name it: keys can rotate)."""

    __slots__ = ("_mac", "id")

    def __init__(self, secret: str, *, source: str) -> None:
        secret = secret.strip()
        if len(secret) < MIN_KEY_CHARS:
            raise ConfigurationError(
                f"{source}: the audit key is empty or too short"
                f" (at least {MIN_KEY_CHARS} characters)"
            )
        raw = secret.encode()
        # Derived one way from the key: safe to write into every record.
        self.id = _sha256(b"risk-engine audit key id\0" + raw)[:16]
        self._mac = hmac.new(raw, digestmod=hashlib.sha256)

    @classmethod
    def from_file(cls, path: Path) -> AuditKey:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read the audit key {path}: {exc}") from exc
        return cls(text, source=str(path))

    def mac(self, data: bytes) -> str:
        # The copy skips re-deriving the key's inner and outer pads on every record.
        state = self._mac.copy()
        state.update(data)
        return state.hexdigest()


def create_key_file(path: Path) -> None:
    """Write a new random key to ``path`` (mode 0600) unless a key is there already.

    Written aside and linked into place, so workers starting together agree on one key
    and none reads a half-written file.
    """
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (secrets.token_hex(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(aside, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(aside)


def _seal(body: dict[str, Any], key: AuditKey) -> tuple[bytes, str]:
    """The line for ``body`` (which ends with prev_hash) with its hmac appended, and the hmac."""
    head = orjson.dumps(body)
    mac = key.mac(head)
    return head[:-1] + _MAC_FIELD + mac.encode() + b'"}', mac


def _link(line: bytes) -> tuple[str | None, bool]:
    """What the next line's prev_hash must be (None: not a record), and whether it is legacy."""
    if len(line) > _SUFFIX_LEN and line.endswith(b'"}'):
        field = line[-_SUFFIX_LEN : -_SUFFIX_LEN + len(_MAC_FIELD)]
        if field == _MAC_FIELD:
            return line[-66:-2].decode("ascii", errors="replace"), False
        if field == _LEGACY_FIELD:
            return _sha256(line), True
    return None, False


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
    """Appends records, chained under ``key``, to one JSON Lines file and its segments.

    ``segment_bytes`` (0: no limit) and ``daily`` say when the file is closed as a
    segment; ``clock`` gives the records' time.
    """

    def __init__(
        self,
        path: Path,
        key: AuditKey,
        *,
        segment_bytes: int = 0,
        daily: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.key = key
        self.segment_bytes = segment_bytes
        self.daily = daily
        self._clock = clock
        # (inode, UTC day of its first record) of the file last looked at.
        self._first_day: tuple[int, int | None] = (-1, None)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open()
        # flock does not exclude threads sharing one descriptor: a lock for them too.
        self._lock = threading.Lock()
        # The file's size and last hmac as this process last left them: when the size
        # still matches, no other process appended and the tail need not be re-read.
        self._known_size = -1
        self._last_link = GENESIS
        try:
            # Start-up: a crash's torn line is recorded now, not at the first request.
            with self._lock:
                self._lock_current()
                try:
                    self._sync(os.fstat(self._fd).st_size, opening=True)
                finally:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(self._fd)
            raise

    def append(self, kind: RecordKind, fields: dict[str, Any]) -> str:
        """Append one record of ``kind``; returns its hmac (the next prev_hash)."""
        return self.append_many([(kind, fields)])

    def append_many(self, records: Sequence[tuple[RecordKind, dict[str, Any]]]) -> str:
        """Append records in their order, each chained from the one before; the last hmac.

        One lock, one look at the file and one write for all of them: several workers
        appending batches still keep one chain. A batch is never split across a
        rotation (the file may pass ``segment_bytes`` by one batch). A write cut
        short (a full disk) raises ShortWriteError saying how many whole lines
        reached the file: they are in the chain, and the next append recovers the
        torn rest as a torn line.
        """
        bodies = [
            (kind, {k: v for k, v in fields.items() if k not in _RESERVED})
            for kind, fields in records
        ]
        with self._lock:
            self._lock_current()
            try:
                size = os.fstat(self._fd).st_size
                if size != self._known_size:
                    self._sync(size)
                if self._due(size):
                    self._rotate()
                return self._write_all(bodies)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def expire(self, horizon: float) -> list[str]:
        """Delete the oldest segments whose last record is older than ``horizon``; their names.

        A ``retention`` record written first names them and the first record of the
        oldest file kept, where verification then starts. A segment whose age cannot
        be read is kept, and so is every segment after it.
        """
        with self._lock:
            self._lock_current()
            try:
                segments = log_segments(self.path)[:-1]
                expired: list[Path] = []
                for segment in segments:
                    last = _last_ts(segment)
                    if last is None or last >= horizon:
                        break
                    expired.append(segment)
                if not expired:
                    return []
                oldest = segments[len(expired)] if len(segments) > len(expired) else self.path
                start = _first_link(oldest)
                if start is None:
                    return []
                size = os.fstat(self._fd).st_size
                if size != self._known_size:
                    self._sync(size)
                names = [segment.name for segment in expired]
                self._write(
                    RecordKind.RETENTION,
                    {"expired": names, "chain_start": start, "start_segment": oldest.name},
                )
                for segment in expired:
                    segment.unlink(missing_ok=True)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        log.info("audit log %s: %d segments past retention deleted", self.path, len(names))
        return names

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def _lock_current(self) -> None:
        """flock the file the log's path names now: another process may have rotated it."""
        while True:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            mine = os.fstat(self._fd)
            try:
                now = os.stat(self.path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
                return
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = self._open()
            self._known_size = -1

    def _due(self, size: int) -> bool:
        """Whether the file must become a segment before the next record."""
        if size == 0:
            return False
        if self.segment_bytes and size >= self.segment_bytes:
            return True
        if not self.daily:
            return False
        inode = os.fstat(self._fd).st_ino
        if self._first_day[0] != inode:
            first = _first_record(self._fd)
            ts = first.get("ts") if first else None
            day = int(ts // DAY_S) if isinstance(ts, int | float) else None
            self._first_day = (inode, day)
        day = self._first_day[1]
        return day is not None and day != int(self._clock() // DAY_S)

    def _rotate(self) -> None:
        """Close the file as the next segment; a new file starts linked to its last record."""
        segment = self._segment_for_current()
        aside = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.next")
        old, old_size = self._fd, self._known_size
        fd = os.open(aside, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.fchmod(fd, stat.S_IMODE(os.fstat(old).st_mode))
            # Locked before its rename makes it the log: a waiting worker queues on it.
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._fd, self._known_size = fd, 0
            self._write(RecordKind.SEGMENT, {"previous_segment": segment.name})
            os.rename(aside, self.path)
        except BaseException:
            self._fd, self._known_size = old, old_size
            os.close(fd)
            aside.unlink(missing_ok=True)
            raise
        fcntl.flock(old, fcntl.LOCK_UN)
        os.close(old)
        log.info("audit log %s: closed segment %s", self.path, segment.name)

    def _segment_for_current(self) -> Path:
        """The next segment's name, linked to the file now (one name more, same bytes)."""
        numbered = _numbered(self.path)
        mine = os.fstat(self._fd)
        if numbered:
            last = numbered[-1][1].stat()
            if (last.st_ino, last.st_dev) == (mine.st_ino, mine.st_dev):
                # A rotation that crashed before its rename already named this file.
                return numbered[-1][1]
        number = numbered[-1][0] if numbered else 0
        first = _first_record(self._fd)
        if first is not None and first.get("record") == RecordKind.SEGMENT.value:
            # Its predecessors may all have expired: the numbers still go on.
            named = _segment_number(self.path, str(first.get("previous_segment")))
            number = max(number, named or 0)
        segment = _segment_path(self.path, number + 1)
        os.link(self.path, segment)
        return segment

    def _write(self, kind: RecordKind, body: dict[str, Any], prefix: bytes = b"") -> str:
        return self._write_all([(kind, body)], prefix)

    def _write_all(
        self, records: Sequence[tuple[RecordKind, dict[str, Any]]], prefix: bytes = b""
    ) -> str:
        """Seal ``records`` in a chain from the file's last record and write them at once."""
        link = self._last_link
        lines = [prefix]
        ends = []
        length = len(prefix)
        for kind, body in records:
            record = {
                "record": kind.value,
                "ts": round(self._clock(), 6),
                **body,
                "key_id": self.key.id,
                "prev_hash": link,
            }
            line, link = _seal(record, self.key)
            lines.append(line)
            lines.append(b"\n")
            length += len(line) + 1
            ends.append(length)
        data = b"".join(lines)
        written = os.write(self._fd, data)
        if written != len(data):
            # A torn line (a full disk): the next append re-reads the tail and recovers it.
            self._known_size = -1
            whole = bisect.bisect_right(ends, written)
            raise ShortWriteError(
                f"short write to {self.path}: {written} of {len(data)} bytes", whole
            )
        self._known_size += len(data)
        self._last_link = link
        return link

    def _sync(self, size: int, *, opening: bool = False) -> None:
        """Take up the chain from the file's tail; record a torn last line's recovery."""
        self._known_size = size
        torn_at = size
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            torn_at = self._line_start(size)
        self._last_link, legacy = self._last_link_before(torn_at)
        if torn_at < size:
            torn = os.pread(self._fd, size - torn_at, torn_at)
            log.warning(
                "audit log %s ends with a torn line (%d bytes at offset %d, a crash"
                " mid-write): recorded and chained from the last complete record",
                self.path,
                len(torn),
                torn_at,
            )
            recovery = {"offset": torn_at, "length": len(torn), "sha256": _sha256(torn)}
            self._write(RecordKind.RECOVERY, {"torn": recovery}, prefix=b"\n")
        elif opening and legacy:
            # The first keyed record seals the unkeyed chain before it: do it now. Said
            # aloud, since a log an attacker rewrote unkeyed would be sealed just the same.
            log.warning(
                "audit log %s ends with unkeyed records of an earlier version: sealed"
                " under audit key %s by a migration record",
                self.path,
                self.key.id,
            )
            self._write(RecordKind.MIGRATION, {"legacy_bytes": size})

    def _last_link_before(self, end: int) -> tuple[str, bool]:
        """The link of the last record ending before ``end`` (a line boundary), and if legacy."""
        if end > _SUFFIX_LEN + 1:
            # The usual case: the last line is a keyed record, its hmac in its last bytes
            # (read with one byte more than the suffix and without the newline).
            link, legacy = _link(os.pread(self._fd, _SUFFIX_LEN + 1, end - _SUFFIX_LEN - 2))
            if link is not None and not legacy:
                return link, False
        while end > 0:
            start = self._line_start(end - 1)
            link, legacy = _link(os.pread(self._fd, end - 1 - start, start))
            if link is not None:
                return link, legacy
            end = start  # a line that is no record: verify reports it, the chain skips it
        return GENESIS, False

    def _line_start(self, end: int) -> int:
        """The offset where the line holding byte ``end - 1`` starts."""
        pos = end
        while pos > 0:
            step = min(_TAIL_CHUNK, pos)
            cut = os.pread(self._fd, step, pos - step).rfind(b"\n")
            if cut >= 0:
                return pos - step + cut + 1
            pos -= step
        return 0

    def close(self) -> None:
        os.close(self._fd)


def _segment_path(active: Path, number: int) -> Path:
    return active.with_name(f"{_stem(active)}.{number:0{SEGMENT_DIGITS}d}{active.suffix}")


def _stem(active: Path) -> str:
    return active.name[: -len(active.suffix)] if active.suffix else active.name


def _segment_number(active: Path, name: str) -> int | None:
    """The number in a segment's name of the log ``active``, or None if it is not one."""
    digits = rf"\.(\d{{{SEGMENT_DIGITS},}})"
    found = re.fullmatch(re.escape(_stem(active)) + digits + re.escape(active.suffix), name)
    return int(found.group(1)) if found else None


def _numbered(active: Path) -> list[tuple[int, Path]]:
    """The closed segments of the log ``active``, by number."""
    found = []
    for candidate in active.parent.glob(f"{glob.escape(_stem(active))}.*"):
        number = _segment_number(active, candidate.name)
        if number is not None and candidate.is_file():
            found.append((number, candidate))
    return sorted(found)


def log_segments(active: Path) -> list[Path]:
    """The files of the log ``active`` in chain order: its closed segments, then itself."""
    segments = [path for _, path in _numbered(active)]
    if segments and active.exists() and segments[-1].samefile(active):
        segments.pop()  # a rotation that crashed before its rename: one file, two names
    return [*segments, active] if active.exists() else segments


def audit_segments(path: Path) -> list[Path]:
    """The files of one audit log in chain order, from its active file or its directory.

    In a directory, a log is a ``NAME.jsonl`` that holds audit records or has numbered
    segments beside it; a directory with none, or with several, is refused.
    """
    if not path.is_dir():
        return log_segments(path)
    actives: set[Path] = set()
    for candidate in path.iterdir():
        if candidate.name.startswith(".") or not candidate.is_file():
            continue
        found = re.fullmatch(rf"(.+)\.\d{{{SEGMENT_DIGITS},}}(\.[^.]+)?", candidate.name)
        if found:
            actives.add(path / (found.group(1) + (found.group(2) or "")))
        elif _first_link(candidate) is not None:
            actives.add(candidate)
    if not actives:
        raise ConfigurationError(f"{path} holds no audit log")
    if len(actives) > 1:
        names = ", ".join(sorted(p.name for p in actives))
        raise ConfigurationError(f"{path} holds several audit logs ({names}): name the files")
    return log_segments(actives.pop())


def _first_line(fd: int) -> bytes:
    """The first complete line of the open file ``fd`` (empty if none), without its newline."""
    data, offset = b"", 0
    while True:
        chunk = os.pread(fd, _TAIL_CHUNK, offset)
        cut = chunk.find(b"\n")
        if cut >= 0:
            return data + chunk[:cut]
        if not chunk:
            return b""
        data, offset = data + chunk, offset + len(chunk)


def _first_record(fd: int) -> dict[str, Any] | None:
    try:
        record = orjson.loads(_first_line(fd) or b"null")
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _first_link(path: Path) -> str | None:
    """The link (hmac) of a file's first line if it is an audit record, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        link, legacy = _link(_first_line(fd))
    finally:
        os.close(fd)
    return link if link is not None and not legacy else None


def _last_ts(path: Path) -> float | None:
    """The ``ts`` of a file's last complete record, or None when none can be read."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - 16 * _TAIL_CHUNK))
        lines = handle.read().split(b"\n")[:-1]
    for line in reversed(lines):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        ts = record.get("ts") if isinstance(record, dict) else None
        if isinstance(ts, int | float):
            return float(ts)
    return None


@dataclass(frozen=True)
class Break:
    """One line where the chain does not hold, and why (``source``: the file's name)."""

    line: int
    problem: str
    source: str = ""


@dataclass
class VerifyResult:
    """The outcome of checking a chain: every break, not only the first."""

    records: int = 0
    breaks: list[Break] = field(default_factory=list)
    # Unkeyed lines of the old chain, and the keyed record that seals them (line, ts).
    legacy: int = 0
    sealed_by: tuple[int, float] | None = None
    segments: int = 0
    # The file the chain starts in when a retention record says older segments expired.
    starts_at: str | None = None

    @property
    def ok(self) -> bool:
        return not self.breaks


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        yield from enumerate(handle, start=1)


def _check_line(line: bytes, keys: dict[str, AuditKey]) -> tuple[str, dict[str, Any] | None]:
    """What is wrong with one line's own seal ("" when nothing), and its record."""
    link, legacy = _link(line)
    if link is None or not line.startswith(b"{"):
        return "not an audit record (no hmac at its end)", None
    head = line[:-_SUFFIX_LEN] + b"}"
    try:
        record = orjson.loads(head)
    except orjson.JSONDecodeError:
        return "not valid JSON", None
    if not isinstance(record, dict):
        return "not an audit record", None
    claimed = line[-66:-2].decode("ascii", errors="replace")
    if legacy:
        if _sha256(head) != claimed:
            return "the unkeyed record's content does not match its hash (edited)", record
        return "", record
    key = keys.get(str(record.get("key_id")))
    if key is None:
        return f"sealed with key id {record.get('key_id')!r}, which no key given has", record
    if not hmac.compare_digest(key.mac(head), claimed):
        return (
            "the record's content does not match its hmac (edited, or forged without the key)",
            record,
        )
    return "", record


def verify_chain(path: Path, keys: Iterable[AuditKey]) -> VerifyResult:
    """Check every line's hmac under ``keys`` and its link to the record before it.

    Every break is reported and the check goes on from the line after it, so an edit
    or a torn line never hides a later one.
    """
    return verify_segments([path], keys)


def verify_segments(paths: Sequence[Path], keys: Iterable[AuditKey]) -> VerifyResult:
    """Check the files of one log in chain order as one chain (see ``verify_chain``).

    Each file after the first must open with a ``segment`` record naming the file
    before it; the first may open with one only where a retention record in the
    chain says the segments before it expired.
    """
    check = _Verifier({key.id: key for key in keys})
    for path in paths:
        check.begin(path.name)
        offset = 0
        for number, raw in _lines(path):
            if not raw.endswith(b"\n"):
                check.fail(
                    number,
                    "torn: the last line is incomplete (a crash mid-write; the service"
                    " records its recovery when it next opens the log)",
                )
                break
            check.line(number, offset, raw[:-1])
            offset += len(raw)
    return check.finish()


@dataclass
class _Line:
    """What the verifier remembers of the line before: a recovery record may name it."""

    number: int
    offset: int
    data: bytes
    prev: str  # the link expected before it
    counted: bool  # counted as a verified record
    broken: int  # the index of its break, or -1


class _Verifier:
    def __init__(self, keys: dict[str, AuditKey]) -> None:
        self.keys = keys
        self.result = VerifyResult()
        self.prev = GENESIS  # the link of the last line that had one
        self.keyed = False  # a keyed record was seen: no unkeyed line may follow
        self.unsealed: list[int] = []  # unkeyed lines no keyed record seals yet
        self.last: _Line | None = None
        self.source = ""
        self.previous_source: str | None = None
        self.order: dict[str, int] = {}
        # The first file's opening segment record (its hmac, the segment it names),
        # accepted at the end if a retention record names it as the chain's start.
        self.start: tuple[str, str] | None = None
        self.retention_starts: set[str] = set()

    def begin(self, source: str) -> None:
        if self.order:
            self.previous_source = self.source
        self.source = source
        self.order.setdefault(source, len(self.order))
        self.result.segments += 1
        self.last = None  # a recovery names a line of its own file

    def fail(self, number: int, problem: str) -> int:
        self.result.breaks.append(Break(number, problem, self.source))
        return len(self.result.breaks) - 1

    def line(self, number: int, offset: int, line: bytes) -> None:
        problem, record = _check_line(line, self.keys)
        problems = [problem] if problem else []
        link, legacy = _link(line)
        if record is not None:
            expected = self.prev
            if record.get("record") == RecordKind.RECOVERY.value:
                expected = self._recovery(number, record, problems)
            expected = self._segment_start(number, record, link, problem, expected, problems)
            if record.get("prev_hash") != expected:
                problems.append(
                    "prev_hash does not match the previous record"
                    " (a line was removed, inserted or reordered)"
                )
            if legacy and self.keyed:
                problems.append("an unkeyed record after keyed ones (not written by this version)")
        counted = not problems and not legacy
        broken = self.fail(number, "; ".join(problems)) if problems else -1
        if counted:
            self.result.records += 1
            if record is not None and record.get("record") == RecordKind.RETENTION.value:
                self.retention_starts.add(str(record.get("chain_start")))
            if self.unsealed and not self.keyed and record is not None:
                # The first keyed record's hmac covers the unkeyed chain it links to.
                self.result.legacy, self.unsealed = len(self.unsealed), []
                self.result.sealed_by = (number, float(record.get("ts", 0)))
        elif legacy and not problems:
            self.unsealed.append(number)
        self.keyed = self.keyed or (record is not None and not legacy)
        self.last = _Line(number, offset, line, self.prev, counted, broken)
        if link is not None:
            self.prev = link

    def _recovery(self, number: int, record: dict[str, Any], problems: list[str]) -> str:
        """The link a recovery record must carry; the torn line it names becomes a break."""
        torn = self.last
        named = torn is not None and record.get("torn") == {
            "offset": torn.offset,
            "length": len(torn.data),
            "sha256": _sha256(torn.data),
        }
        if torn is None or not named:
            problems.append("the recovery record does not name the line before it")
            return self.prev
        problem = (
            f"torn line ({len(torn.data)} bytes, a crash mid-write), recovered at line {number}"
        )
        if torn.broken >= 0:
            self.result.breaks[torn.broken] = Break(torn.number, problem, self.source)
        else:
            self.fail(torn.number, problem)
            self.result.records -= torn.counted
        # Written after the torn bytes but chained from the record before them.
        return torn.prev

    def _segment_start(
        self,
        number: int,
        record: dict[str, Any],
        link: str | None,
        sealed: str,
        expected: str,
        problems: list[str],
    ) -> str:
        """Check a file's opening against the file before it; the link expected of it."""
        is_segment = record.get("record") == RecordKind.SEGMENT.value
        if number != 1:
            if is_segment:
                problems.append("a segment record that does not open its file")
            return expected
        named = str(record.get("previous_segment")) if is_segment else None
        if self.previous_source is None:
            if is_segment and not sealed and link is not None:
                # Older segments gone: fine if a retention record says so (checked at the end).
                self.start = (link, named or "")
                return str(record.get("prev_hash"))
            return expected
        if named is None:
            problems.append(
                f"the file does not open with a segment record: it is not the segment"
                f" after {self.previous_source}"
            )
        elif named != self.previous_source:
            problems.append(
                f"it follows {named}, which is missing here ({self.previous_source} comes"
                " before it: a segment missing, renamed or out of order)"
            )
        return expected

    def finish(self) -> VerifyResult:
        if self.start is not None:
            link, named = self.start
            source = next(iter(self.order))
            if link in self.retention_starts:
                self.result.starts_at = source
            else:
                self.source = source
                self.fail(
                    1,
                    f"the chain starts after segment {named}, which is missing (no retention"
                    " record says the segments before it expired)",
                )
        if self.unsealed:
            self.fail(
                self.unsealed[0],
                f"{len(self.unsealed)} unkeyed (legacy) records from here that no keyed"
                " record seals: anyone able to write the file could have written them",
            )
        self.result.breaks.sort(key=lambda b: (self.order.get(b.source, 0), b.line))
        return self.result
