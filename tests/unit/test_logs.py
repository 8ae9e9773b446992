"""The offline logs: read and written as JSON Lines (plain, gzip) and Parquet, one bad-line rule.

Events: bad lines reported and counted, gzip, Parquet, directories, time order. Other
records (labels, outcomes, decisions): the same rule. Writing: round trips in every format.
"""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from risk_engine.errors import ConfigurationError
from risk_engine.offline import logs
from risk_engine.offline.labels import Label, load_labels
from risk_engine.offline.logs import (
    LogReport,
    LogWriter,
    events_in_time_order,
    expand_paths,
    read_events,
    read_many,
    read_records,
    write_records,
)

SAMPLE = Path(__file__).parents[2] / "data" / "samples" / "events.jsonl"


@pytest.fixture(scope="module")
def sample_records() -> list[dict[str, Any]]:
    with SAMPLE.open("rb") as handle:
        return [orjson.loads(line) for _, line in zip(range(50), handle, strict=False)]


def event(i: int, ts: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"e-{i}",
        "timestamp": ts,
        "user_id": "u-1",
        "action": "login",
        "ip": "81.2.69.160",
        **extra,
    }


def write_lines(path: Path, lines: list[bytes | str | dict[str, Any]]) -> Path:
    out = []
    for line in lines:
        if isinstance(line, dict):
            out.append(orjson.dumps(line))
        elif isinstance(line, str):
            out.append(line.encode())
        else:
            out.append(line)
    path.write_bytes(b"\n".join(out) + b"\n")
    return path


# -- bad lines --------------------------------------------------------------------------


def test_bad_lines_are_reported_with_file_and_line_and_counted(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "events.jsonl",
        [
            event(1, "2026-03-01T08:00:00Z"),
            '{"event_id": "e-2", "timestamp": ',  # truncated JSON
            event(3, "2026-03-01T08:01:00Z"),
            event(4, "2026-03-01T08:02:00", ip="81.2.69.160"),  # naive timestamp
            "",  # blank lines are no lines
            event(6, "2026-03-01T08:03:00Z", ip="not-an-ip"),
            b"\xff\xfe not utf-8",
            "[1, 2, 3]",
            event(9, "2026-03-01T08:04:00Z"),
        ],
    )
    report = LogReport()
    events = list(read_events(path, report))
    assert [e.event_id for e in events] == ["e-1", "e-3", "e-9"]
    assert report.events == 3
    assert report.bad == 5
    assert report.lines == 8
    assert [(p.line, p.field) for p in report.problems] == [
        (2, "event"),
        (4, "timestamp"),
        (6, "ip"),
        (7, "event"),
        (8, "event"),
    ]
    for problem in report.problems:
        assert problem.source == str(path)
        assert str(problem).startswith(f"{path}, line {problem.line}: ")
        assert not problem.message.startswith("line ")


def test_file_of_only_bad_lines_yields_nothing_but_counts_them(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "bad.jsonl", ["nope", "{}", "null"])
    report = LogReport()
    assert list(read_events(path, report)) == []
    assert report.bad == 3 and report.events == 0


# -- formats ----------------------------------------------------------------------------


def test_gzip_log(tmp_path: Path, sample_records: list[dict[str, Any]]) -> None:
    path = tmp_path / "events.jsonl.gz"
    lines = [orjson.dumps(r) for r in sample_records[:20]] + [b"{broken"]
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    report = LogReport()
    events = list(read_events(path, report))
    assert [e.event_id for e in events] == [r["event_id"] for r in sample_records[:20]]
    assert report.bad == 1 and report.problems[0].line == 21


def _sample_table(records: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(records)


def test_parquet_log(tmp_path: Path, sample_records: list[dict[str, Any]]) -> None:
    path = tmp_path / "events.parquet"
    pq.write_table(_sample_table(sample_records), path)
    report = LogReport()
    events = list(read_events(path, report))
    assert report.bad == 0
    assert [e.event_id for e in events] == [r["event_id"] for r in sample_records]
    first, record = events[0], sample_records[0]
    assert first.device is not None and first.device.id == record["device"]["id"]
    assert first.timestamp == datetime.fromisoformat(record["timestamp"])
    assert str(first.ip) == record["ip"]


def test_parquet_with_native_timestamps_and_a_bad_row(
    tmp_path: Path, sample_records: list[dict[str, Any]]
) -> None:
    records = [dict(r) for r in sample_records]
    records[7]["ip"] = "not-an-ip"
    table = _sample_table(records)
    stamps = pa.array(
        [datetime.fromisoformat(r["timestamp"]) for r in records], type=pa.timestamp("us", "UTC")
    )
    table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp", stamps)
    path = tmp_path / "native.parquet"
    pq.write_table(table, path)
    report = LogReport()
    events = list(read_events(path, report))
    assert len(events) == len(records) - 1
    assert report.bad == 1
    assert (report.problems[0].line, report.problems[0].field) == (8, "ip")
    assert events[0].timestamp == datetime.fromisoformat(records[0]["timestamp"])


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("broken.jsonl.gz", b"this is not gzip at all"),
        ("truncated.jsonl.gz", gzip.compress(b'{"a": 1}\n' * 1000)[:60]),
        ("broken.parquet", b"PAR1 but nothing after it"),
    ],
)
def test_unreadable_file_is_a_clear_configuration_error(
    tmp_path: Path, name: str, content: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigurationError) as caught:
        list(read_events(path, LogReport()))
    assert str(path) in caught.value.message


# -- directories ------------------------------------------------------------------------


def test_directory_input_reads_every_log_in_name_order(
    tmp_path: Path, sample_records: list[dict[str, Any]]
) -> None:
    root = tmp_path / "logs"
    (root / "nested").mkdir(parents=True)
    write_lines(root / "a.jsonl", sample_records[:10])
    (root / "b.jsonl.gz").write_bytes(
        gzip.compress(b"\n".join(orjson.dumps(r) for r in sample_records[10:20]))
    )
    pq.write_table(_sample_table(sample_records[20:30]), root / "nested" / "c.parquet")
    (root / "README.txt").write_text("not a log")
    assert [p.name for p in expand_paths([root])] == ["a.jsonl", "b.jsonl.gz", "c.parquet"]
    report = LogReport()
    events = list(read_many([root], report))
    assert [e.event_id for e in events] == [r["event_id"] for r in sample_records[:30]]
    assert report.events == 30 and report.bad == 0


def test_directory_without_logs_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigurationError, match="holds no event logs"):
        expand_paths([tmp_path])


def test_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        expand_paths([tmp_path / "absent.jsonl"])


# -- time order -------------------------------------------------------------------------


def test_out_of_order_file_is_sorted_with_ties_in_file_order(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "shuffled.jsonl",
        [
            event(1, "2026-03-01T09:00:00Z"),
            event(2, "2026-03-01T08:00:00Z"),
            "garbage",
            event(4, "2026-03-01T08:30:00Z"),
            event(5, "2026-03-01T09:00:00+00:00"),  # tie with e-1, later in the file
            event(6, "2026-03-01T10:00:00+02:00"),  # 08:00Z: tie with e-2
            "",
            event(8, "2026-03-01T07:59:59.999Z"),
        ],
    )
    report = LogReport()
    events = list(events_in_time_order(path, report))
    assert [e.event_id for e in events] == ["e-8", "e-2", "e-6", "e-4", "e-1", "e-5"]
    assert report.events == 6 and report.bad == 1
    assert report.problems[0].line == 3
    assert report.lines == 7


def test_sorted_file_streams_in_file_order(tmp_path: Path) -> None:
    lines: list[bytes | str | dict[str, Any]] = [
        event(i, datetime.fromtimestamp(1_772_352_000 + 60 * (i // 2), UTC).isoformat())
        for i in range(40)
    ]
    lines.insert(5, "not json")
    path = write_lines(tmp_path / "sorted.jsonl", lines)
    ordered, plain = LogReport(), LogReport()
    in_order = list(events_in_time_order(path, ordered))
    assert [e.event_id for e in in_order] == [e.event_id for e in read_events(path, plain)]
    assert [e.event_id for e in in_order] == [f"e-{i}" for i in range(40)]
    assert (ordered.events, ordered.bad, ordered.lines) == (plain.events, plain.bad, plain.lines)
    assert ordered.problems[0].line == 6


def test_sample_log_comes_out_in_time_order(tmp_path: Path) -> None:
    report = LogReport()
    stamps = [e.epoch for e in events_in_time_order(SAMPLE, report)]
    assert stamps == sorted(stamps)
    assert report.bad == 0 and report.events == len(stamps) > 4000


def test_gzip_out_of_order_is_sorted_too(tmp_path: Path) -> None:
    path = tmp_path / "shuffled.jsonl.gz"
    lines = [
        event(1, "2026-03-01T09:00:00Z"),
        event(2, "2026-03-01T08:00:00Z"),
        event(3, "2026-03-01T09:00:00Z"),
    ]
    path.write_bytes(gzip.compress(b"\n".join(orjson.dumps(x) for x in lines)))
    ids = [e.event_id for e in events_in_time_order(path, LogReport())]
    assert ids == ["e-2", "e-1", "e-3"]


def test_an_unknown_record_field_in_a_plain_event_is_ignored(tmp_path: Path) -> None:
    # Only audit-chain lines (with prev_hash) of another kind are skipped.
    path = write_lines(
        tmp_path / "events.jsonl",
        [
            event(1, "2026-03-01T08:00:00Z", record="whatever"),
            event(2, "2026-03-01T08:01:00Z", record="feedback", prev_hash="0" * 64),
        ],
    )
    report = LogReport()
    events = list(read_events(path, report))
    assert [e.event_id for e in events] == ["e-1"]
    assert report.skipped == 1 and report.bad == 0


def test_timestamps_out_of_range_are_bad_lines_in_time_order_too(tmp_path: Path) -> None:
    """Years 0001 and 9999 (issue 15) are reported and skipped, never a crash or a sort key."""
    path = write_lines(
        tmp_path / "events.jsonl",
        [
            event(1, "2026-03-01T08:05:00Z"),
            event(2, "9999-12-31T23:59:59Z"),
            event(3, "0001-01-01T00:00:00Z"),
            event(4, "2026-03-01T08:00:00Z"),
            '{"event_id": "e-5", "x": ' + "[" * 2000 + "]" * 2000 + "}",
        ],
    )
    report = LogReport()
    events = list(events_in_time_order(path, report))
    assert [e.event_id for e in events] == ["e-4", "e-1"]
    assert [(p.line, p.field) for p in report.problems] == [
        (2, "timestamp"),
        (3, "timestamp"),
        (5, "event"),
    ]


# -- records of any kind: one reader, one writer ------------------------------------------

FORMATS = ("x.jsonl", "x.jsonl.gz", "x.parquet")
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
RECORDS = st.lists(
    st.fixed_dictionaries(
        {"event_id": TEXT, "is_attack": st.booleans(), "score": st.floats(-1e9, 1e9)},
        optional={
            "attack_type": st.none() | TEXT,
            "count": st.integers(-(2**40), 2**40),
            "reasons": st.lists(st.fixed_dictionaries({"code": TEXT}), max_size=3),
        },
    ),
    max_size=30,
)


def as_read(record: dict[str, Any], name: str) -> dict[str, Any]:
    """What reading gives back: Parquet has no absent field, only nulls, which are dropped."""
    if name.endswith(".parquet"):
        return {k: v for k, v in record.items() if v is not None}
    return record


def identity(record: dict[str, Any]) -> dict[str, Any]:
    return record


@pytest.mark.parametrize("name", FORMATS)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=RECORDS)
def test_records_round_trip_in_every_format(
    tmp_path: Path, name: str, records: list[dict[str, Any]]
) -> None:
    path = tmp_path / name
    assert write_records(path, records) == len(records)
    report = LogReport()
    assert list(read_records([path], identity, report)) == [as_read(r, name) for r in records]
    assert (report.events, report.bad) == (len(records), 0)


def test_a_gzip_output_is_the_same_bytes_for_the_same_records(tmp_path: Path) -> None:
    records = [{"event_id": f"e-{i}", "n": i} for i in range(100)]
    write_records(tmp_path / "a.jsonl.gz", records)
    write_records(tmp_path / "b.jsonl.gz", records)
    first = (tmp_path / "a.jsonl.gz").read_bytes()
    assert first == (tmp_path / "b.jsonl.gz").read_bytes()
    plain = b"".join(orjson.dumps(r) + b"\n" for r in records)
    assert gzip.decompress(first) == plain


def test_whole_lines_written_as_parquet_are_records(tmp_path: Path) -> None:
    path = tmp_path / "decisions.parquet"
    with LogWriter(path) as out:
        out.write(b'{"event_id": "a", "score": 0.5}\n{"event_id": "b", "score": 1}\n')
        out.write(memoryview(b'{"event_id": "c", "score": 0.25}\n'))
    rows = pq.read_table(path).to_pylist()
    assert rows == [
        {"event_id": "a", "score": 0.5},
        {"event_id": "b", "score": 1.0},
        {"event_id": "c", "score": 0.25},
    ]


def test_parquet_keeps_a_field_first_seen_in_a_later_row_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "PARQUET_ROW_GROUP", 2)
    records: list[dict[str, Any]] = [{"event_id": f"e-{i}", "n": i} for i in range(5)]
    records.append({"event_id": "late", "n": 0.5, "extra": "kept", "reasons": [{"code": "x"}]})
    path = tmp_path / "out.parquet"
    write_records(path, records)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    back = list(read_records([path], identity, LogReport()))
    assert back[-1] == records[-1]
    assert [r["n"] for r in back] == [r["n"] for r in records]


def test_parquet_refuses_a_field_whose_types_cannot_be_reconciled(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    with pytest.raises(ConfigurationError, match="cannot be written as Parquet"):
        write_records(path, [{"event_id": "a", "n": 1}, {"event_id": "b", "n": "one"}])
    assert not path.exists()


def test_an_output_interrupted_by_an_error_is_not_converted_to_parquet(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError), LogWriter(path) as out:
        out.write_record({"event_id": "a"})
        raise RuntimeError("the command failed")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no spool left behind


def label_line(event_id: str, attack: bool = False) -> dict[str, Any]:
    return {"event_id": event_id, "is_attack": attack, "attack_type": "x" if attack else None}


def test_a_bad_line_in_the_middle_of_a_gzip_file_is_reported_and_skipped(tmp_path: Path) -> None:
    lines = [orjson.dumps(label_line(f"e-{i}", attack=i == 4)) for i in range(1, 7)]
    lines[2] = b'{"event_id": "e-3", "is_attack":'  # line 3: torn
    lines[4] = orjson.dumps({"event_id": "e-5"})  # line 5: no label field
    path = tmp_path / "labels.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    report = LogReport()
    labels = load_labels([path], report)
    assert sorted(labels) == ["e-1", "e-2", "e-4", "e-6"]
    assert labels["e-4"] == Label(True, "x")
    assert report.bad == 2 and report.events == 4
    assert [(p.source, p.line, p.field) for p in report.problems] == [
        (str(path), 3, None),
        (str(path), 5, "label"),
    ]
    assert str(report.problems[0]).startswith(f"{path}, line 3: not valid JSON")


def test_a_bad_event_in_the_middle_of_a_gzip_file_is_reported_and_skipped(
    tmp_path: Path, sample_records: list[dict[str, Any]]
) -> None:
    lines = [orjson.dumps(r) for r in sample_records[:6]]
    lines[3] = orjson.dumps({**sample_records[3], "ip": "999.0.0.1"})
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    report = LogReport()
    events = list(events_in_time_order(path, report))
    assert len(events) == 5 and report.bad == 1
    (problem,) = report.problems
    assert (problem.line, problem.field) == (4, "ip")


def test_records_of_a_directory_and_a_glob_in_name_order(tmp_path: Path) -> None:
    root = tmp_path / "labels"
    (root / "later").mkdir(parents=True)
    write_records(root / "a.jsonl", [label_line("e-1"), label_line("e-2")])
    write_records(root / "b.jsonl.gz", [label_line("e-3", attack=True)])
    write_records(root / "later" / "c.parquet", [label_line("e-2", attack=True)])
    (root / "notes.txt").write_text("not a log")
    report = LogReport()
    labels = load_labels([root], report)
    # Later files override earlier ones: c.parquet relabels e-2.
    assert labels == {
        "e-1": Label(False),
        "e-2": Label(True, "x"),
        "e-3": Label(True, "x"),
    }
    assert report.events == 4
    globbed = load_labels([root / "**" / "*.jsonl*"], LogReport())
    assert sorted(globbed) == ["e-1", "e-2", "e-3"] and globbed["e-2"] == Label(False)
    with pytest.raises(ConfigurationError, match="no label files match"):
        load_labels([root / "*.csv"], LogReport())
    with pytest.raises(ConfigurationError, match="label file not found"):
        load_labels([root / "absent.jsonl"], LogReport())


def test_a_parquet_row_that_is_not_a_label_is_a_bad_line_with_its_row(tmp_path: Path) -> None:
    path = tmp_path / "labels.parquet"
    write_records(path, [label_line("e-1"), {"event_id": "e-2", "note": "?"}, label_line("e-3")])
    report = LogReport()
    assert sorted(load_labels([path], report)) == ["e-1", "e-3"]
    assert [(p.line, p.field) for p in report.problems] == [(2, "label")]
