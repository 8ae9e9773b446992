"""Reading event logs: JSON Lines (plain or gzip) and Parquet, one or many files.

Audit logs are read too: their decision lines are events once their sealed
personal fields are opened with the keys in ``LogReport.keys`` (the store's
``sealing_keys``); a line whose key is gone (an erased user) is counted as
``sealed`` and skipped, like the audit's other record kinds.

Bad lines are reported with their file and line number and counted, never
silently dropped; the rest is processed. Backtests need time order over files
too large to hold as objects, so ``events_in_time_order`` sorts on a compact
index of (timestamp, position) and reads each line again by its offset.
"""

from __future__ import annotations

import gzip
import zlib
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import orjson

from risk_engine.errors import ConfigurationError, InvalidEventError
from risk_engine.events import Event, parse_event, parse_event_line
from risk_engine.sealing import open_record

LOG_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".ndjson", ".parquet")
MAX_KEPT_PROBLEMS = 1000


@dataclass(frozen=True)
class BadLine:
    """One line that did not validate."""

    source: str
    line: int
    message: str
    field: str | None

    def __str__(self) -> str:
        return f"{self.source}, line {self.line}: {self.message}"


@dataclass
class LogReport:
    """Counts of what was read, and the first problems found."""

    lines: int = 0
    events: int = 0
    bad: int = 0
    # Audit records of other kinds than "decision" (results, feedback, erasures).
    skipped: int = 0
    # Audit decision records whose personal fields stay sealed: their user was erased
    # (or no ``keys`` were given), or the store was down when they were written.
    sealed: int = 0
    problems: list[BadLine] = field(default_factory=list)
    # Ref -> data key (``ProfileStore.sealing_keys``): what opens sealed audit records.
    keys: Mapping[str, str] | None = None

    def add_bad(self, source: str, error: InvalidEventError, line: int) -> None:
        self.bad += 1
        if len(self.problems) < MAX_KEPT_PROBLEMS:
            message = error.message.removeprefix(f"line {line}: ")
            self.problems.append(BadLine(source, line, message, error.field))


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given; directories and glob patterns become their log files, sorted by name.

    A rotated audit log's segments (``audit.000001.jsonl``, ...) sort before its
    active ``audit.jsonl``: a directory or ``audit*.jsonl`` reads them in order.
    """
    out: list[Path] = []
    for path in paths:
        if not path.exists() and _is_glob(path):
            # Quoted on the command line, or given by a program: expanded here.
            anchor = Path(path.anchor) if path.is_absolute() else Path()
            pattern = str(path.relative_to(anchor)) if path.is_absolute() else str(path)
            matched = sorted(p for p in anchor.glob(pattern) if p.is_file() and _is_log(p))
            if not matched:
                raise ConfigurationError(f"no event logs match {path}")
            out.extend(matched)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_log(p))
            if not found:
                raise ConfigurationError(f"directory {path} holds no event logs ({LOG_SUFFIXES})")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise ConfigurationError(f"event log not found: {path}")
    return out


def _is_glob(path: Path) -> bool:
    return any(char in str(path) for char in "*?[")


def _is_log(path: Path) -> bool:
    return any(path.name.endswith(suffix) for suffix in LOG_SUFFIXES)


def _open(path: Path) -> IO[bytes]:
    if path.name.endswith(".gz"):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        row = 0
        for batch in table.iter_batches(batch_size=10_000):
            for record in batch.to_pylist():
                row += 1
                yield row, {k: v for k, v in record.items() if v is not None}
    except pa.ArrowException as exc:
        raise ConfigurationError(f"event log {path} cannot be read: {exc}") from exc


def _not_an_event(raw: bytes) -> bool:
    """An audit log line of a kind other than ``decision``: no event, skipped (not bad).

    Only a line of the audit chain (it carries ``prev_hash``) counts: in a plain
    event, an unknown ``record`` field is ignored like any other (contract section 1).
    """
    if b'"record"' not in raw or b'"prev_hash"' not in raw:
        return False
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return (
        isinstance(data, dict)
        and "prev_hash" in data
        and data.get("record", "decision") != "decision"
    )


def read_events(path: Path, report: LogReport) -> Iterator[Event]:
    """The valid events of one file in file order; bad lines go to the report.

    A file that cannot be read at all (not gzip, truncated, not Parquet) is a
    ConfigurationError naming it, so the commands exit with a clear message.
    """
    try:
        yield from _read_events(path, report)
    except (OSError, EOFError, zlib.error) as exc:
        raise ConfigurationError(f"event log {path} cannot be read: {exc}") from exc


def _read_events(path: Path, report: LogReport) -> Iterator[Event]:
    for _, _, event in _read_piece(path, 0, None, report):
        if event is not None:
            yield event


def read_piece(
    path: Path, start: int, end: int | None, report: LogReport
) -> Iterator[tuple[int, bytes, Event | None]]:
    """Every line of a piece of a log: (line number in the piece, its bytes, its event).

    The piece is the byte range [start, end) of a plain JSON Lines file (``start``
    at a line start), or, with ``end`` None, the whole of any log. The event is
    None for a line that is not one (blank, bad: reported, foreign: skipped); a
    Parquet row's bytes are its record as a JSON line. Errors as ``read_events``.
    """
    try:
        yield from _read_piece(path, start, end, report)
    except (OSError, EOFError, zlib.error) as exc:
        raise ConfigurationError(f"event log {path} cannot be read: {exc}") from exc


def _read_piece(
    path: Path, start: int, end: int | None, report: LogReport
) -> Iterator[tuple[int, bytes, Event | None]]:
    source = str(path)
    if path.name.endswith(".parquet"):
        for row, record in _parquet_rows(path):
            report.lines += 1
            stamp = record.get("timestamp")
            if isinstance(stamp, datetime):
                # Parquet keeps real timestamps; the contract's form is RFC 3339 text.
                record["timestamp"] = stamp.isoformat()
            try:
                parsed = parse_event(record, line=row)
            except InvalidEventError as exc:
                report.add_bad(source, exc, row)
                yield row, b"", None
                continue
            report.events += 1
            yield row, orjson.dumps(record, default=str), parsed
        return
    with _open(path) as handle:
        position = start
        if start:
            handle.seek(start)
        for number, raw in enumerate(handle, start=1):
            if end is not None and position >= end:
                break
            position += len(raw)
            yield number, raw, _line_event(raw, number, source, report)


def _sealed_record(raw: bytes) -> dict[str, Any] | None:
    """An audit decision line whose personal fields are sealed, parsed; None otherwise."""
    if b'"sealed"' not in raw or b'"prev_hash"' not in raw:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict) and "prev_hash" in data and "sealed" in data:
        return data
    return None


def _line_event(raw: bytes, number: int, source: str, report: LogReport) -> Event | None:
    """One JSON Lines record as an Event; None (counted in the report) when it is not one."""
    if not raw.strip():
        return None
    report.lines += 1
    if _not_an_event(raw):
        report.skipped += 1
        return None
    sealed = _sealed_record(raw)
    try:
        if sealed is None:
            event = parse_event_line(raw, line=number)
        else:
            opened = open_record(sealed, report.keys or {})
            if opened is None or opened.get("sealed", "") is None:
                report.sealed += 1
                return None
            event = parse_event(opened, line=number)
    except InvalidEventError as exc:
        report.add_bad(source, exc, number)
        return None
    report.events += 1
    return event


def read_many(paths: list[Path], report: LogReport) -> Iterator[Event]:
    for path in expand_paths(paths):
        yield from read_events(path, report)


def _timestamp_of(raw: bytes) -> float:
    """The event's timestamp for ordering, or NaN when the line will not validate."""
    try:
        data = orjson.loads(raw)
        return parse_event(data).epoch
    except (orjson.JSONDecodeError, InvalidEventError):
        return float("nan")


def events_in_time_order(path: Path, report: LogReport) -> Iterator[Event]:
    """Valid events of a JSON Lines file in timestamp order (ties: file order).

    Memory stays flat in the file size: one pass keeps (timestamp, offset) per
    line in numpy arrays; an already ordered file is then simply streamed, any
    other is read back line by line in sorted order.
    """
    if path.name.endswith((".gz", ".parquet")):
        # Compressed and columnar files cannot be seeked cheaply: sort in memory.
        events = list(read_events(path, report))
        events.sort(key=lambda e: e.epoch)  # stable: ties keep file order
        yield from events
        return
    offsets = array("q")
    stamps = array("d")
    with path.open("rb") as handle:
        position = 0
        for raw in handle:
            offsets.append(position)
            position += len(raw)
            stamps.append(_timestamp_of(raw) if raw.strip() else float("-inf"))
    ts = np.frombuffer(stamps, dtype=np.float64)
    valid_ts = ts[np.isfinite(ts)]
    if valid_ts.size == 0 or bool(np.all(np.diff(valid_ts) >= 0)):
        yield from read_events(path, report)
        return
    order = np.argsort(ts, kind="stable")
    source = str(path)
    with path.open("rb") as handle:
        for index in order:
            number = int(index) + 1
            handle.seek(offsets[index])
            event = _line_event(handle.readline(), number, source, report)
            if event is not None:
                yield event
