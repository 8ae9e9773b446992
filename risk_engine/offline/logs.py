"""The one reader and writer of the offline logs: JSON Lines (plain or gzip) and Parquet.

Every offline command reads its inputs here (events, labels, step-up outcomes,
decisions, feedback) and writes its outputs here (decisions, simulated events,
labels and outcomes). The format follows the name: ``.parquet`` is Parquet, a
name ending in ``.gz`` is gzip-compressed JSON Lines, anything else plain JSON
Lines. Inputs may be files, directories (their logs, sorted by name) and glob
patterns, local or named by a URL (``remote.py``: read through fsspec).

One rule for bad input everywhere: a line (or Parquet row) that is not a valid
record is reported with its file and line number, and the field at fault when
it fails validation (``BadLine``), counted in the ``LogReport`` and skipped; the
rest is read. A file that cannot be read at all is a ``ConfigurationError``
naming it.

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

import glob
import gzip
import heapq
import tempfile
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, TypeVar, cast

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from risk_engine.errors import ConfigurationError, InvalidEventError
from risk_engine.events import Event, parse_event, parse_event_line, quick_epoch
from risk_engine.offline.remote import LogPath, RemoteFile, expand_url, log_path
from risk_engine.sealing import open_record

LOG_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".ndjson", ".parquet")
MAX_KEPT_PROBLEMS = 1000
# Rows of a Parquet output converted, and written, at a time (one row group each).
PARQUET_ROW_GROUP = 65_536

T = TypeVar("T")


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
    # Valid records: events, for an event log (labels, outcomes, ... for read_records).
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

    def absorb(self, other: LogReport) -> None:
        """Add the counts and problems of another read (of other files) to this one."""
        self.lines += other.lines
        self.events += other.events
        self.bad += other.bad
        self.skipped += other.skipped
        self.sealed += other.sealed
        room = MAX_KEPT_PROBLEMS - len(self.problems)
        self.problems.extend(other.problems[: max(room, 0)])


def expand_paths(paths: Sequence[LogPath | str], what: str = "event log") -> list[LogPath]:
    """Files as given; directories and glob patterns become their log files, sorted by name.

    A glob (quoted on the command line, or given by a program) may use ``**``; a
    directory it matches gives its logs. A rotated audit log's segments
    (``audit.000001.jsonl``, ...) sort before its active ``audit.jsonl``: a
    directory or ``audit*.jsonl`` reads them in order. A URL (a string or a
    ``RemoteFile``) is expanded the same way by its file system (``remote.py``).
    """
    out: list[LogPath] = []
    for given in paths:
        path = log_path(given)
        if isinstance(path, RemoteFile):
            out.extend(expand_url(path.url, _is_log_name, what))
            continue
        if not path.exists() and _is_glob(path):
            matched = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
            found = [p for p in matched if p.is_file() and _is_log(p)]
            for directory in (p for p in matched if p.is_dir()):
                found.extend(cast(list[Path], expand_paths([directory], what)))
            if not found:
                raise ConfigurationError(f"no {what}s match {path}")
            out.extend(sorted(set(found)))
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_log(p))
            if not found:
                raise ConfigurationError(f"directory {path} holds no {what}s ({LOG_SUFFIXES})")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise ConfigurationError(f"{what} not found: {path}")
    return out


def _is_glob(path: Path) -> bool:
    return any(char in str(path) for char in "*?[")


def _is_log(path: Path) -> bool:
    return _is_log_name(path.name)


def _is_log_name(name: str) -> bool:
    return any(name.endswith(suffix) for suffix in LOG_SUFFIXES)


def _open(path: LogPath) -> IO[bytes]:
    gz = path.name.endswith(".gz")
    if isinstance(path, RemoteFile):
        return path.open("rb", compression="gzip" if gz else None)
    if gz:
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def _parquet_rows(path: LogPath) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each row (numbered from 1) as a record: nulls dropped, timestamps as RFC 3339 text."""
    with _open(path) if isinstance(path, RemoteFile) else nullcontext() as handle:
        try:
            table = pq.ParquetFile(path if handle is None else handle)
            row = 0
            for batch in table.iter_batches(batch_size=10_000):
                for record in batch.to_pylist():
                    row += 1
                    out = {k: v for k, v in record.items() if v is not None}
                    stamp = out.get("timestamp")
                    if isinstance(stamp, datetime):
                        # Parquet keeps real timestamps; the contract's form is RFC 3339 text.
                        out["timestamp"] = stamp.isoformat()
                    yield row, out
        except pa.ArrowException as exc:
            raise ConfigurationError(f"log {path} cannot be read: {exc}") from exc


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


def read_events(path: LogPath, report: LogReport) -> Iterator[Event]:
    """The valid events of one file in file order; bad lines go to the report.

    A file that cannot be read at all (not gzip, truncated, not Parquet) is a
    ConfigurationError naming it, so the commands exit with a clear message.
    """
    try:
        yield from _read_events(path, report)
    except (OSError, EOFError, zlib.error) as exc:
        raise ConfigurationError(f"event log {path} cannot be read: {exc}") from exc


def _read_events(path: LogPath, report: LogReport) -> Iterator[Event]:
    for _, _, event in _read_piece(path, 0, None, report):
        if event is not None:
            yield event


def read_piece(
    path: LogPath, start: int, end: int | None, report: LogReport
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
    path: LogPath, start: int, end: int | None, report: LogReport
) -> Iterator[tuple[int, bytes, Event | None]]:
    source = str(path)
    if path.name.endswith(".parquet"):
        for row, record in _parquet_rows(path):
            report.lines += 1
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


def read_many(paths: Sequence[LogPath | str], report: LogReport) -> Iterator[Event]:
    for path in expand_paths(paths):
        yield from read_events(path, report)


def _timestamp_of(raw: bytes) -> float:
    """The event's timestamp for ordering, or NaN when the line will not validate.

    A bad line may get its timestamp too: it is only read sooner or later in the
    second pass, which reports it, and the report is put back in file order.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return float("nan")
    if isinstance(data, dict) and b'"sealed"' not in raw:
        # Validating the whole event here would do the second pass's work twice.
        quick = quick_epoch(data.get("timestamp"))
        if quick is not None:
            return quick
    try:
        return parse_event(data).epoch
    except InvalidEventError:
        return float("nan")


def events_in_time_order(path: LogPath, report: LogReport) -> Iterator[Event]:
    """Valid events of a JSON Lines file in timestamp order (ties: file order).

    Memory stays flat in the file size: one pass keeps (timestamp, offset) per
    line in numpy arrays; an already ordered file is then simply streamed, any
    other is read back line by line in sorted order (a remote one is sorted in
    memory: a read per line would be a request per line).
    """
    if path.name.endswith((".gz", ".parquet")):
        # Compressed and columnar files cannot be seeked cheaply: sort in memory.
        yield from _sorted_in_memory(path, report)
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
    if isinstance(path, RemoteFile):
        yield from _sorted_in_memory(path, report)
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


def _sorted_in_memory(path: LogPath, report: LogReport) -> Iterator[Event]:
    events = list(read_events(path, report))
    events.sort(key=lambda e: e.epoch)  # stable: ties keep file order
    yield from events


def merged_events(paths: Sequence[LogPath | str], report: LogReport) -> Iterator[Event]:
    """The events of logs (files, directories, globs) merged into one time order.

    Ties keep input order: file after file, and file order within one.
    """
    streams = [events_in_time_order(path, report) for path in expand_paths(paths)]
    keyed = (
        ((event.epoch, index, event) for event in stream) for index, stream in enumerate(streams)
    )
    for _, _, event in heapq.merge(*keyed, key=lambda item: (item[0], item[1])):
        yield event


# -- records other than events: labels, outcomes, decisions, feedback ---------------------


def _records(path: LogPath) -> Iterator[tuple[int, dict[str, Any] | InvalidEventError]]:
    """Each record of one log with its line (or row) number, or the error that stops it."""
    if path.name.endswith(".parquet"):
        yield from _parquet_rows(path)
        return
    with _open(path) as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield number, InvalidEventError(f"not valid JSON ({exc})", line=number)
                continue
            if not isinstance(record, dict):
                yield number, InvalidEventError("a record must be a JSON object", line=number)
                continue
            yield number, record


def read_records(
    paths: Sequence[LogPath | str],
    parse: Callable[[dict[str, Any]], T],
    report: LogReport,
    what: str = "log",
) -> Iterator[T]:
    """The valid records of logs (files, directories, globs) in input order.

    ``parse`` turns one JSON object into a record, or raises InvalidEventError
    naming the field; such a line, or one that is not a JSON object, is a bad
    line of the report. ``report.events`` counts the records read.
    """
    for path in expand_paths(paths, what):
        source = str(path)
        try:
            for number, record in _records(path):
                report.lines += 1
                if isinstance(record, InvalidEventError):
                    report.add_bad(source, record, number)
                    continue
                try:
                    parsed = parse(record)
                except InvalidEventError as exc:
                    report.add_bad(source, exc, number)
                    continue
                report.events += 1
                yield parsed
        except (OSError, EOFError, zlib.error) as exc:
            raise ConfigurationError(f"{what} {path} cannot be read: {exc}") from exc


def raw_lines(path: LogPath) -> Iterator[bytes]:
    """The lines of one JSON Lines log (plain or gzip), as bytes, for a quick scan."""
    try:
        with _open(path) as handle:
            yield from handle
    except (OSError, EOFError, zlib.error) as exc:
        raise ConfigurationError(f"log {path} cannot be read: {exc}") from exc


def required_text(record: dict[str, Any], name: str) -> str:
    """A record's non-empty string field; InvalidEventError naming it otherwise."""
    value = record.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidEventError(f"{name}: a non-empty string is required", field=name)
    return value


# -- writing ------------------------------------------------------------------------------


class LineSink(Protocol):
    """Where JSON lines go: a ``LogWriter``, or a buffer in a worker."""

    def write(self, data: bytes | memoryview, /) -> object: ...


class LogWriter:
    """One output log, in the format its name says: plain or gzip JSON Lines, or Parquet.

    ``write`` takes whole JSON lines (what the commands produce), ``write_record``
    one JSON object. A gzip output carries no timestamp, so the same records give
    the same bytes. A Parquet output is spooled as JSON Lines and converted at
    ``close``, in row groups, with the columns of every record: a field first
    seen late, or an int that turns float, is kept; a field whose types cannot
    be reconciled (text here, a number there) is a ConfigurationError naming it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._parquet = path.name.endswith(".parquet")
        if self._parquet:
            # Closed by close(), like the plain file. Beside the output: the spool is as
            # large as the log it becomes.
            self._raw: IO[bytes] = tempfile.TemporaryFile(dir=path.parent)  # noqa: SIM115
        else:
            self._raw = path.open("wb", buffering=1 << 20)  # closed by close()
        self._handle: IO[bytes] = self._raw
        if path.name.endswith(".gz"):
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0)
            self._handle = cast(IO[bytes], gz)
        self._closed = False

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        else:
            self._discard()

    def write(self, data: bytes | memoryview, /) -> int:
        """Whole JSON lines, each ending in a newline."""
        return self._handle.write(data)

    def write_record(self, record: Mapping[str, Any]) -> None:
        """One JSON object."""
        self._handle.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))

    def write_records(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Every record of ``records``; how many."""
        count = 0
        for record in records:
            self.write_record(record)
            count += 1
        return count

    def close(self) -> None:
        """Finish the file (for Parquet: convert the spool)."""
        if self._closed:
            return
        self._closed = True
        if self._handle is not self._raw:
            self._handle.close()
        try:
            if self._parquet:
                self._write_parquet()
        finally:
            self._raw.close()

    def _discard(self) -> None:
        """After an error: close without converting (a Parquet output is not written)."""
        self._closed = True
        if self._handle is not self._raw:
            self._handle.close()
        self._raw.close()

    def _spooled_batches(self) -> Iterator[list[dict[str, Any]]]:
        self._raw.seek(0)
        rows: list[dict[str, Any]] = []
        for line in self._raw:
            if line.strip():
                rows.append(orjson.loads(line))
                if len(rows) >= PARQUET_ROW_GROUP:
                    yield rows
                    rows = []
        if rows:
            yield rows

    def _write_parquet(self) -> None:
        try:
            # pa.array infers a struct of every row's fields (from_pylist: the first row's).
            schemas = [pa.schema(list(pa.array(rows).type)) for rows in self._spooled_batches()]
            schema = (
                pa.unify_schemas(schemas, promote_options="permissive")
                if schemas
                else pa.schema([])
            )
            with pq.ParquetWriter(self.path, schema) as writer:
                for rows in self._spooled_batches():
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise ConfigurationError(f"{self.path} cannot be written as Parquet: {exc}") from exc


def write_records(path: Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Write ``records`` to the log at ``path`` (format by name); how many."""
    with LogWriter(path) as out:
        return out.write_records(records)
