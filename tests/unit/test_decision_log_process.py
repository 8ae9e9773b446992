"""The decision log written by a child process: same rows, never blocking, no loss on exit."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from risk_engine.decision_log import DecisionLog, DecisionLogWriter, LogEntry
from risk_engine.decision_log.process import BATCH_RECORDS, ChildConfig, DecisionLogProcess
from risk_engine.geo import GeoLocator, default_city_database
from risk_engine.privacy import Hasher
from tests.unit.test_decision_log import make_pair

SECRET = "a-test-secret-of-thirty-two-chars!"


def config(path: Path) -> ChildConfig:
    return ChildConfig(url=f"sqlite:///{path}", secret=SECRET, city_db=str(default_city_database()))


def count(path: Path, where: str = "1 = 1") -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute(f"SELECT count(*) FROM decisions WHERE {where}").fetchone()[0])


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[DecisionLogProcess]:
    out = DecisionLogProcess(
        DecisionLog(f"sqlite:///{tmp_path / 'd.db'}"), config(tmp_path / "d.db")
    )
    out.start()
    yield out
    out.close()


def wait_dead(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":  # ended, not yet reaped by its parent
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still runs")


def test_the_child_writes_the_rows_the_in_process_writer_writes(tmp_path: Path) -> None:
    pairs = [make_pair(i, user=("alice", "bob")[i % 2]) for i in range(60)]
    hasher = Hasher(SECRET)
    geo = GeoLocator(default_city_database())
    here = DecisionLogWriter(
        DecisionLog(f"sqlite:///{tmp_path / 'thread.db'}"),
        locate=geo.lookup,
        device_key=lambda d: "id:" + hasher.digest("device", d),
    )
    there = DecisionLogProcess(
        DecisionLog(f"sqlite:///{tmp_path / 'child.db'}"), config(tmp_path / "child.db")
    )
    there.start()
    for event, decision in pairs:
        here.decision(event, decision)
        there.decision(event, decision)
    here.entry(LogEntry.FEEDBACK, event_id="e-alice-0", user_id="alice", outcome="fraud", ts=1.0)
    there.entry(LogEntry.FEEDBACK, event_id="e-alice-0", user_id="alice", outcome="fraud", ts=1.0)
    assert there.flush()
    here.close()
    there.close()

    def rows(path: Path, table: str, skip: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(path) as db:
            cursor = db.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3")
            names = [d[0] for d in cursor.description]
            keep = [i for i, name in enumerate(names) if name != skip]
            return [tuple(row[i] for i in keep) for row in cursor.fetchall()]

    # decided_at is each writer's own clock; entry ids are random.
    written = rows(tmp_path / "child.db", "decisions", "decided_at")
    assert len(written) == 60
    assert written == rows(tmp_path / "thread.db", "decisions", "decided_at")
    # The child located the address and keyed the device as the engine would.
    assert all("NO" in row for row in written)
    key = f"id:{hasher.digest('device', 'dev-alice')}"
    assert sum(key in str(row) for row in written) == 30
    for table in ("rollup", "decision_reasons"):
        assert rows(tmp_path / "child.db", table, "") == rows(tmp_path / "thread.db", table, "")
    entries = rows(tmp_path / "child.db", "log_entries", "entry_id")
    assert entries == rows(tmp_path / "thread.db", "log_entries", "entry_id")
    assert len(entries) == 1


def test_erasure_commits_what_is_in_flight_then_deletes_the_user(
    writer: DecisionLogProcess, tmp_path: Path
) -> None:
    for i in range(40):
        writer.decision(*make_pair(i, user=("alice", "bob")[i % 2]))
    # No flush first: the erasure itself must see the rows still on their way.
    assert writer.erase_user("alice") == 20
    assert writer.flush()
    assert count(tmp_path / "d.db", "user_id = 'alice'") == 0
    assert count(tmp_path / "d.db", "user_id = 'bob'") == 20


def test_a_stopped_child_never_blocks_a_decision(tmp_path: Path) -> None:
    writer = DecisionLogProcess(
        DecisionLog(f"sqlite:///{tmp_path / 'd.db'}"), config(tmp_path / "d.db"), max_backlog=50
    )
    writer.start()
    assert writer.flush()
    pid = writer.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    event, decision = make_pair(1)
    sent = 0
    try:
        # Were a send to block, this loop would hang (pytest-timeout ends it). It runs
        # until the socket buffer and the backlog are full and a batch is dropped.
        while not writer.dropped and sent < 1_000_000:
            writer.decision(event, decision.model_copy(update={"decision_id": f"d-{sent}"}))
            sent += 1
        assert 0 < writer.dropped <= BATCH_RECORDS
        dropped = writer.dropped
        for i in range(BATCH_RECORDS):
            writer.decision(event, decision.model_copy(update={"decision_id": f"x-{i}"}))
        sent += BATCH_RECORDS
        assert writer.dropped == dropped + BATCH_RECORDS
    finally:
        os.kill(pid, signal.SIGCONT)
    assert writer.flush()
    writer.close()
    assert count(tmp_path / "d.db") == sent - writer.dropped


def test_a_dead_child_is_replaced_and_what_it_missed_is_counted(tmp_path: Path) -> None:
    writer = DecisionLogProcess(
        DecisionLog(f"sqlite:///{tmp_path / 'd.db'}"),
        config(tmp_path / "d.db"),
        restart_interval_s=3600.0,
    )
    writer.start()
    first = writer.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_dead(first)
    for i in range(5):
        writer.decision(*make_pair(i))
    writer.flush_pending()  # what the server's tick does
    assert writer.dropped == 5
    assert writer.pid is None
    # Once the restart interval has passed, the next record starts a new child.
    writer._restart_interval_s = 0.0
    for i in range(5, 12):
        writer.decision(*make_pair(i))
    writer.flush_pending()
    assert writer.pid not in (None, first)
    assert writer.flush()
    writer.close()
    assert count(tmp_path / "d.db") == 7
    assert writer.dropped == 5


def test_close_commits_everything_and_ends_the_child(
    writer: DecisionLogProcess, tmp_path: Path
) -> None:
    for i in range(300):
        writer.decision(*make_pair(i))
    pid = writer.pid
    assert pid is not None
    writer.close()
    wait_dead(pid)
    assert count(tmp_path / "d.db") == 300


def test_a_killed_server_still_gets_its_sent_rows_committed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        from risk_engine.decision_log import DecisionLog
        from risk_engine.decision_log.process import DecisionLogProcess
        from tests.unit.test_decision_log import make_pair
        from tests.unit.test_decision_log_process import config
        path = Path({str(tmp_path / "d.db")!r})
        writer = DecisionLogProcess(DecisionLog(f"sqlite:///{{path}}"), config(path))
        writer.start()
        for i in range(200):
            writer.decision(*make_pair(i))
        writer.flush_pending()  # sent: what the server's tick does every few ms
        print(writer.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    wait_dead(int(done.stdout.split()[0]))
    assert count(tmp_path / "d.db") == 200


def test_the_child_ignores_the_signals_meant_for_the_server(writer: DecisionLogProcess) -> None:
    pid = writer.pid
    assert pid is not None
    assert writer.flush()
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    writer.decision(*make_pair(1))
    assert writer.flush()
    assert writer.pid == pid


def test_a_writer_that_cannot_be_restarted_costs_records_not_decisions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = DecisionLogProcess(
        DecisionLog(f"sqlite:///{tmp_path / 'd.db'}"),
        config(tmp_path / "d.db"),
        restart_interval_s=0.0,
    )
    writer.start()
    pid = writer.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_dead(pid)
    # A real exec that fails (no such interpreter), as a broken install would.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    for i in range(3):
        writer.decision(*make_pair(i))
    writer.flush_pending()
    writer.entry(LogEntry.FEEDBACK, event_id="e-alice-0", user_id="alice", outcome="fraud")
    assert writer.dropped == 4
    writer.close()
