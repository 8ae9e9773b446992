"""The audit writer thread: order, batches, back-pressure, drain, crashes and failing disks."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from risk_engine.audit import AuditKey, AuditLog, RecordKind, verify_chain
from risk_engine.audit_writer import AuditWriter

KEY = AuditKey("k3y-0f-the-audit-writer-tests-0123456789", source="test")
KEY_TEXT = "0123456789abcdef" * 4


def records(path: Path) -> list[dict[str, Any]]:
    """The file's records; a torn line reads as an empty dict."""
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            out.append({})
    return out


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


@pytest.fixture
def writer(path: Path) -> Iterator[AuditWriter]:
    audit = AuditWriter(AuditLog(path, KEY), max_records=16, max_delay_s=0.005)
    yield audit
    audit.close()


def test_records_are_written_in_the_order_they_were_handed_in(
    path: Path, writer: AuditWriter
) -> None:
    kinds = [RecordKind.DECISION, RecordKind.CHALLENGE_RESULT, RecordKind.FEEDBACK]
    for i in range(300):  # many batches of at most 16
        writer.submit(kinds[i % 3], {"n": i})
    writer.flush()
    written = records(path)
    assert [r["n"] for r in written] == list(range(300))
    assert [r["record"] for r in written] == [kinds[i % 3].value for i in range(300)]
    result = verify_chain(path, [KEY])
    assert result.ok and result.records == 300


def test_each_threads_records_keep_their_order(path: Path, writer: AuditWriter) -> None:
    def run(t: int) -> None:
        for i in range(200):
            writer.submit(RecordKind.FEEDBACK, {"thread": t, "n": i})

    threads = [threading.Thread(target=run, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.flush()
    written = records(path)
    assert len(written) == 6 * 200
    for t in range(6):
        assert [r["n"] for r in written if r["thread"] == t] == list(range(200))
    assert verify_chain(path, [KEY]).ok


def test_a_record_made_by_a_function_is_made_on_the_writer_thread(
    path: Path, writer: AuditWriter
) -> None:
    made_on: list[str] = []

    def make() -> dict[str, Any]:
        made_on.append(threading.current_thread().name)
        return {"event_id": "e-1"}

    writer.submit(RecordKind.DECISION, {"event_id": "e-0"})
    writer.submit(RecordKind.DECISION, make)
    writer.flush()
    assert [r["event_id"] for r in records(path)] == ["e-0", "e-1"]
    assert made_on == ["risk-engine-audit-writer"]


def test_a_full_queue_makes_the_caller_wait_and_loses_nothing(path: Path) -> None:
    writer = AuditWriter(AuditLog(path, KEY), max_records=4, max_delay_s=0.005)
    returned = 0

    def submit_all() -> None:
        nonlocal returned
        for i in range(12):
            writer.submit(RecordKind.FEEDBACK, {"n": i})
            returned += 1

    # Another process holds the file's lock: the writer cannot append.
    holder = os.open(path, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    submitter = threading.Thread(target=submit_all)
    try:
        submitter.start()
        deadline = time.monotonic() + 10
        while returned < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        submitter.join(0.3)
        # Four records are held (queued or in the writer's hands); the fifth waits.
        assert submitter.is_alive() and returned == 4
        assert path.read_bytes() == b""
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
    submitter.join(10)
    assert returned == 12
    writer.close()
    assert [r["n"] for r in records(path)] == list(range(12))
    assert verify_chain(path, [KEY]).ok


def test_close_writes_what_is_queued(path: Path) -> None:
    # A batch would wait a second: close does not.
    writer = AuditWriter(AuditLog(path, KEY), max_records=1000, max_delay_s=1.0)
    for i in range(500):
        writer.submit(RecordKind.FEEDBACK, {"n": i})
    writer.close()
    assert [r["n"] for r in records(path)] == list(range(500))
    assert verify_chain(path, [KEY]).ok
    writer.submit(RecordKind.FEEDBACK, {"n": 500})  # after close: lost, not raised
    assert len(records(path)) == 500


def test_synchronous_mode_writes_before_submit_returns(path: Path) -> None:
    writer = AuditWriter(AuditLog(path, KEY), max_records=0, max_delay_s=0.005)
    assert not writer.asynchronous
    writer.submit(RecordKind.FEEDBACK, {"n": 0})
    assert [r["n"] for r in records(path)] == [0]
    writer.close()


@pytest.mark.parametrize("max_records", [0, 8])
def test_a_failing_disk_is_counted_and_logged_never_raised(
    max_records: int, caplog: pytest.LogCaptureFixture
) -> None:
    lost: list[int] = []
    # /dev/full: every write fails with ENOSPC, as on a full disk.
    writer = AuditWriter(
        AuditLog(Path("/dev/full"), KEY),
        max_records=max_records,
        max_delay_s=0.005,
        on_lost=lost.append,
    )
    with caplog.at_level(logging.ERROR, logger="risk_engine.audit"):
        for i in range(5):
            writer.submit(RecordKind.DECISION, {"n": i})
        writer.flush()
        writer.close()
    assert sum(lost) == 5
    assert any(
        "not written" in r.getMessage() and "decision" in r.getMessage() for r in caplog.records
    )


def test_a_record_that_cannot_be_sealed_loses_only_itself(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lost: list[int] = []
    writer = AuditWriter(AuditLog(path, KEY), max_records=16, max_delay_s=0.05, on_lost=lost.append)
    with caplog.at_level(logging.ERROR, logger="risk_engine.audit"):
        writer.submit(RecordKind.FEEDBACK, {"n": 0})
        writer.submit(RecordKind.FEEDBACK, {"n": object()})  # not JSON: a bug
        writer.submit(RecordKind.FEEDBACK, {"n": 2})
        writer.close()
    assert [r["n"] for r in records(path)] == [0, 2]
    assert lost == [1]
    assert verify_chain(path, [KEY]).ok


def test_a_torn_batch_is_recovered_like_a_torn_line(path: Path) -> None:
    # Power lost while a batch was reaching the disk: its tail is missing.
    log = AuditLog(path, KEY)
    log.append_many([(RecordKind.FEEDBACK, {"n": i}) for i in range(2)])
    log.append_many([(RecordKind.FEEDBACK, {"n": i}) for i in range(2, 6)])
    log.close()
    lines = path.read_bytes().splitlines(keepends=True)
    cut = sum(len(line) for line in lines[:3]) + len(lines[3]) // 2  # inside record 4
    os.truncate(path, cut)
    AuditLog(path, KEY).close()  # the next start-up
    written = records(path)
    assert [r.get("n") for r in written[:3]] == [0, 1, 2]
    assert written[4]["record"] == "recovery" and written[4]["prev_hash"] == written[2]["hmac"]
    result = verify_chain(path, [KEY])
    assert [b.line for b in result.breaks] == [4] and "torn" in result.breaks[0].problem


_CHILD = """
import sys
from pathlib import Path
from risk_engine.audit import AuditKey, AuditLog, RecordKind
from risk_engine.audit_writer import AuditWriter
path, key, name, count, max_records = sys.argv[1:6]
writer = AuditWriter(
    AuditLog(Path(path), AuditKey.from_file(Path(key))),
    max_records=int(max_records),
    max_delay_s=0.005,
)
for i in range(int(count)):
    writer.submit(RecordKind.FEEDBACK, {"event_id": f"{name}-{i}"})
    if name == "crash":
        sys.stdout.write(f"{i}\\n")
        sys.stdout.flush()
writer.close()
"""


def child(path: Path, key: Path, name: str, count: int, max_records: int) -> list[str]:
    return [sys.executable, "-c", _CHILD, str(path), str(key), name, str(count), str(max_records)]


def test_two_processes_batching_keep_one_chain(path: Path, tmp_path: Path) -> None:
    key = tmp_path / "audit.key"
    key.write_text(KEY_TEXT + "\n")
    workers = [subprocess.Popen(child(path, key, f"p{n}", 1500, 64)) for n in range(2)]
    for worker in workers:
        assert worker.wait(timeout=120) == 0
    result = verify_chain(path, [AuditKey.from_file(key)])
    assert result.ok, result.breaks[:3]
    ids = [r["event_id"] for r in records(path)]
    for n in range(2):
        assert [i for i in ids if i.startswith(f"p{n}-")] == [f"p{n}-{i}" for i in range(1500)]


def test_a_killed_process_loses_at_most_its_queue_and_the_chain_holds(
    path: Path, tmp_path: Path
) -> None:
    key = tmp_path / "audit.key"
    key.write_text(KEY_TEXT + "\n")
    max_records = 32
    process = subprocess.Popen(
        child(path, key, "crash", 1_000_000, max_records), stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    handed_in = 0
    for _ in process.stdout:
        handed_in += 1
        if handed_in == 3000:
            break
    os.kill(process.pid, signal.SIGKILL)
    handed_in += len(process.stdout.read().splitlines())  # reported before it died
    process.stdout.close()
    process.wait(timeout=30)
    AuditLog(path, AuditKey.from_file(key)).close()  # the restart: a torn tail is recovered
    result = verify_chain(path, [AuditKey.from_file(key)])
    assert all("torn" in b.problem for b in result.breaks), result.breaks
    written = [r["event_id"] for r in records(path) if r["record"] == "feedback"]
    # What reached the file is the records handed in, in order, none missing before
    # the last; of those reported handed in, at most the queue's length is lost.
    assert written == [f"crash-{i}" for i in range(len(written))]
    assert handed_in - len(written) <= max_records
