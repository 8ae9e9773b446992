"""Audit log rotation: segments by size or day, linked, expired after retention, verified."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from risk_engine.api.app import create_app
from risk_engine.audit import (
    GENESIS,
    AuditKey,
    AuditLog,
    RecordKind,
    audit_segments,
    verify_segments,
)
from risk_engine.cli import app as cli
from risk_engine.config import Settings
from risk_engine.offline.logs import LogReport, read_many
from tests.api.conftest import flush_audit

EventFactory = Callable[..., dict[str, Any]]
KEY = AuditKey("k3y-0f-the-audit-chain-for-tests-0123456789", source="test")
DAY = 86400.0


def records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def feed(log: AuditLog, n: int, first: int = 0) -> None:
    for i in range(first, first + n):
        log.append(RecordKind.FEEDBACK, {"event_id": f"e-{i}", "label": "confirmed_legit"})


class Clock:
    """A settable time for the records' ts: a day passes without waiting for one."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_log_rotates_by_size_and_each_segment_links_to_the_last(tmp_path: Path) -> None:
    # Defect: one file per replica that grows without end.
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, KEY, segment_bytes=2000)
    feed(log, 40)
    log.close()
    segments = audit_segments(tmp_path)
    assert len(segments) >= 4 and segments[-1] == path
    assert [p.name for p in segments[:2]] == ["audit.000001.jsonl", "audit.000002.jsonl"]
    for before, segment in itertools.pairwise(segments):
        # About the limit: a segment ends with the record that crossed it.
        assert before.stat().st_size < 2000 + 400
        first = records(segment)[0]
        assert first["record"] == "segment"
        assert first["previous_segment"] == before.name
        assert first["prev_hash"] == records(before)[-1]["hmac"]
    assert records(segments[0])[0]["prev_hash"] == GENESIS
    result = verify_segments(segments, [KEY])
    assert result.ok, result
    assert result.records == 40 + len(segments) - 1
    kinds = [r["record"] for p in segments for r in records(p)]
    assert kinds.count("feedback") == 40


def test_the_log_rotates_at_the_day_boundary(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    clock = Clock(1_767_225_000.0)  # 2025-12-31 23:50 UTC
    log = AuditLog(path, KEY, daily=True, clock=clock)
    feed(log, 3)
    clock.now += 1200  # past midnight
    feed(log, 2, first=3)
    log.close()
    segments = audit_segments(tmp_path)
    assert [p.name for p in segments] == ["audit.000001.jsonl", "audit.jsonl"]
    assert [r["event_id"] for r in records(segments[0])] == ["e-0", "e-1", "e-2"]
    assert [r["record"] for r in records(path)] == ["segment", "feedback", "feedback"]
    assert verify_segments(segments, [KEY]).ok


def test_several_processes_keep_one_chain_across_rotations(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    key_file = tmp_path / "audit.key"
    key_file.write_text("0123456789abcdef" * 4 + "\n")
    code = (
        "import sys, threading\n"
        "from pathlib import Path\n"
        "from risk_engine.audit import AuditKey, AuditLog, RecordKind\n"
        "log = AuditLog(Path(sys.argv[1]), AuditKey.from_file(Path(sys.argv[3])),"
        " segment_bytes=6000)\n"
        "def run(t):\n"
        "    for i in range(40):\n"
        "        log.append(RecordKind.FEEDBACK, {'event_id': f'{sys.argv[2]}-{t}-{i}'})\n"
        "threads = [threading.Thread(target=run, args=(t,)) for t in range(3)]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", code, str(path), f"p{n}", str(key_file)])
        for n in range(4)
    ]
    for worker in workers:
        assert worker.wait(timeout=120) == 0
    segments = audit_segments(tmp_path)
    assert len(segments) > 5
    result = verify_segments(segments, [AuditKey.from_file(key_file)])
    assert result.ok, result.breaks[:5]
    ids = [r.get("event_id") for p in segments for r in records(p) if r["record"] == "feedback"]
    assert len(ids) == len(set(ids)) == 4 * 3 * 40
    assert [r["record"] for p in segments[1:] for r in records(p)[:1]] == ["segment"] * (
        len(segments) - 1
    )


def rotated(tmp_path: Path, n: int = 30) -> list[Path]:
    log = AuditLog(tmp_path / "audit.jsonl", KEY, segment_bytes=1500)
    feed(log, n)
    log.close()
    return audit_segments(tmp_path)


def test_a_missing_segment_is_a_break(tmp_path: Path) -> None:
    segments = rotated(tmp_path)
    segments[2].unlink()
    result = verify_segments(audit_segments(tmp_path), [KEY])
    assert not result.ok
    (found,) = result.breaks
    assert found.source == segments[3].name and found.line == 1
    assert segments[2].name in found.problem and "missing" in found.problem


def test_a_reordered_segment_is_a_break(tmp_path: Path) -> None:
    segments = rotated(tmp_path)
    given = [segments[0], segments[2], segments[1], *segments[3:]]
    result = verify_segments(given, [KEY])
    assert {(b.source, b.line) for b in result.breaks} >= {
        (segments[2].name, 1),
        (segments[1].name, 1),
    }
    # Renamed into the wrong order in the directory: the same.
    a, b = segments[1], segments[2]
    a.rename(tmp_path / "swap")
    b.rename(a)
    (tmp_path / "swap").rename(b)
    assert not verify_segments(audit_segments(tmp_path), [KEY]).ok


def test_the_oldest_segment_cut_without_a_record_is_a_break(tmp_path: Path) -> None:
    segments = rotated(tmp_path)
    segments[0].unlink()
    result = verify_segments(segments[1:], [KEY])
    assert [(b.source, b.line) for b in result.breaks] == [(segments[1].name, 1)]
    assert "audit.000001.jsonl" in result.breaks[0].problem


def test_segments_past_retention_expire_and_the_chain_verifies_from_the_oldest_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    clock = Clock(time.time() - 10 * DAY)
    log = AuditLog(path, KEY, daily=True, clock=clock)
    for day in range(10):
        feed(log, 2, first=2 * day)
        clock.now += DAY
    clock.now = time.time()
    feed(log, 1, first=20)
    before = audit_segments(tmp_path)
    assert len(before) == 11
    expired = log.expire(time.time() - 3.5 * DAY)
    log.close()
    assert expired == [p.name for p in before[:7]]
    kept = audit_segments(tmp_path)
    assert kept == before[7:]
    retention = records(path)[-1]
    assert retention["record"] == "retention"
    assert retention["expired"] == expired
    assert retention["chain_start"] == records(kept[0])[0]["hmac"]
    assert retention["start_segment"] == kept[0].name
    result = verify_segments(kept, [KEY])
    assert result.ok, result
    assert result.starts_at == kept[0].name
    # Expiring again finds nothing, and writes nothing.
    again = AuditLog(path, KEY, daily=True)
    assert again.expire(time.time() - 3.5 * DAY) == []
    again.close()
    assert records(path)[-1] == retention
    # A kept segment deleted by hand (no record says so) is still a break.
    kept[0].unlink()
    assert not verify_segments(kept[1:], [KEY]).ok


def test_cli_verifies_a_directory_or_the_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RISK_ENGINE_AUDIT_KEY", "k3y-0f-the-audit-chain-for-tests-0123456789")
    logs = tmp_path / "logs"
    logs.mkdir()
    segments = rotated(logs)
    (logs / "feedback.jsonl").write_text('{"event_id": "e-1", "label": "confirmed_fraud"}\n')
    runner = CliRunner()
    whole = runner.invoke(cli, ["audit", "verify", str(logs)])
    assert whole.exit_code == 0, whole.output
    assert f"ok: {30 + len(segments) - 1} records in {len(segments)} segments" in whole.output
    listed = runner.invoke(cli, ["audit", "verify", *map(str, segments)])
    assert listed.exit_code == 0, listed.output
    gap = runner.invoke(cli, ["audit", "verify", str(segments[0]), *map(str, segments[2:])])
    assert gap.exit_code == 1
    assert gap.output.startswith(f"{segments[2].name}, line 1:")
    assert segments[1].name in gap.output.splitlines()[0]


def test_training_reads_the_segments_of_a_directory_or_a_glob(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    log = AuditLog(tmp_path / "audit.jsonl", KEY, segment_bytes=1500)
    for i in range(12):
        event = {
            "event_id": f"e-{i}",
            "timestamp": datetime(2026, 3, 1, 8, i, tzinfo=UTC).isoformat(),
            "user_id": "u-1",
            "action": "login",
            "ip": "84.208.20.0",
        }
        log.append(RecordKind.DECISION, {**event, "decision": "allow", "score": 0.1})
    log.close()
    assert len(audit_segments(tmp_path)) > 2
    for given in (tmp_path, tmp_path / "audit*.jsonl"):
        report = LogReport()
        read = [e.event_id for e in read_many([given], report)]
        assert read == [f"e-{i}" for i in range(12)], given
        assert report.bad == 0 and report.skipped == len(audit_segments(tmp_path)) - 1


def test_the_service_rotates_by_the_settings_and_expires_at_start_up(
    make_settings: Callable[..., Settings], make_event: EventFactory, api_key: str
) -> None:
    settings = make_settings(audit_segment_bytes=3000, retention_days=1.5 / 86400)
    headers = {"Authorization": f"Bearer {api_key}"}
    with TestClient(create_app(settings)) as client:
        for _ in range(6):
            event = make_event(user_id="u-rotated")
            assert client.post("/v1/decisions", json=event, headers=headers).status_code == 200
            flush_audit(client)  # one record a batch: each rotates the file
    directory = settings.audit_path.parent
    written = audit_segments(directory)
    assert len(written) > 2
    time.sleep(2.0)
    with TestClient(create_app(settings)):
        deadline = time.monotonic() + 10
        while len(audit_segments(directory)) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert audit_segments(directory) == [settings.audit_path]
    assert records(settings.audit_path)[-1]["record"] == "retention"
    result = verify_segments([settings.audit_path], [settings.resolve_audit_key()])
    assert result.ok, result


def test_segment_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISK_ENGINE_AUDIT_SEGMENT_BYTES", "1048576")
    monkeypatch.setenv("RISK_ENGINE_AUDIT_SEGMENT_DAILY", "false")
    settings = Settings()
    assert settings.audit_segment_bytes == 1048576 and settings.audit_segment_daily is False
