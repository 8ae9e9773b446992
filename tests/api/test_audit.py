"""The audit log: written by the service, hash-chained across processes, readable by training."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from risk_engine.audit import GENESIS, AuditLog, RecordKind, decision_record, verify_chain
from risk_engine.cli import app as cli
from risk_engine.config import Settings
from risk_engine.decision import Decision
from risk_engine.events import parse_event
from risk_engine.logs import LogReport, read_events
from risk_engine.privacy import Hasher
from risk_engine.sealing import open_record

EventFactory = Callable[..., dict[str, Any]]


def fill(client: TestClient, make_event: EventFactory, n: int = 5) -> list[dict[str, Any]]:
    events = [make_event(user_id="u-audited", action="login") for _ in range(n)]
    for event in events:
        assert client.post("/v1/decisions", json=event).status_code == 200
    client.post("/v1/challenges/c-unknown/result", json={"passed": True, "method": "totp"})
    feedback = {"label": "confirmed_legit", "note": "called the customer"}
    assert client.post(f"/v1/events/{events[0]['event_id']}/feedback", json=feedback).is_success
    return events


def keys_of(client: TestClient) -> dict[str, str]:
    return client.app.state.service.engine.store.sealing_keys()  # type: ignore[attr-defined, no-any-return]


def test_the_service_writes_a_valid_chain(
    client: TestClient, settings: Settings, make_event: EventFactory
) -> None:
    events = fill(client, make_event)
    records = [orjson.loads(line) for line in settings.audit_path.read_bytes().splitlines()]
    assert [r["record"] for r in records] == ["decision"] * 5 + ["challenge_result", "feedback"]
    assert records[0]["prev_hash"] == GENESIS
    # Personal fields are sealed under the user's key: the line names the user's ref only.
    sealed = records[0]
    assert sealed["event_id"] == events[0]["event_id"] and sealed["ref"].startswith("r-")
    assert "user_id" not in sealed and "ip" not in sealed and "features" not in sealed
    assert b"u-audited" not in settings.audit_path.read_bytes()
    first = open_record(sealed, keys_of(client))
    assert first is not None and first["user_id"] == "u-audited"
    assert first["event_id"] == events[0]["event_id"]
    assert sealed["reason_codes"] == [r["code"] for r in first["reasons"]]
    assert first["ip"] == "84.208.0.0"  # truncated to the /24
    assert first["device"]["id"] != "d-1" and first["device"]["id"].startswith("h-")
    assert set(first["features"]) >= {"impossible_travel", "new_country"}
    assert first["model_version"] and first["policy_version"] and "shadow" in first
    refused = records[5]
    assert refused["outcome"] == "not_found" and refused["challenge_id"] == "c-unknown"
    feedback = open_record(records[6], keys_of(client))
    assert feedback is not None and feedback["note"] == "called the customer"
    result = verify_chain(settings.audit_path)
    assert result.ok and result.records == 7


def test_an_audit_log_is_a_training_input(
    client: TestClient, settings: Settings, make_event: EventFactory
) -> None:
    events = fill(client, make_event)
    report = LogReport(keys=keys_of(client))
    read = list(read_events(settings.audit_path, report))
    assert [e.event_id for e in read] == [e["event_id"] for e in events]
    assert {e.user_id for e in read} == {"u-audited"}
    assert report.bad == 0 and report.skipped == 2 and report.events == 5
    assert report.sealed == 0
    # Without the keys (or once the user is erased) the decisions stay sealed: skipped.
    blind = LogReport()
    assert list(read_events(settings.audit_path, blind)) == []
    assert blind.sealed == 5 and blind.bad == 0 and blind.events == 0


def tamper(path: Path, line: int, old: bytes, new: bytes) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    path.write_bytes(b"".join(lines))


def write_log(path: Path, n: int) -> None:
    log = AuditLog(path)
    for i in range(n):
        log.append(RecordKind.FEEDBACK, {"event_id": f"e-{i}", "label": "confirmed_legit"})
    log.close()


def test_an_edited_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 6)
    tamper(path, 3, b"confirmed_legit", b"confirmed_fraud")
    result = verify_chain(path)
    assert result.broken_line == 3 and "edited" in result.problem


def test_an_edited_last_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 4)
    tamper(path, 4, b'"e-3"', b'"e-9"')
    assert verify_chain(path).broken_line == 4


def test_a_rehashed_or_removed_line_breaks_the_next_link(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 5)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2] + lines[3:]))
    result = verify_chain(path)
    assert result.broken_line == 3 and "prev_hash" in result.problem


def test_appends_from_several_processes_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    code = (
        "import sys, threading\n"
        "from pathlib import Path\n"
        "from risk_engine.audit import AuditLog, RecordKind\n"
        "log = AuditLog(Path(sys.argv[1]))\n"
        "def run(t):\n"
        "    for i in range(50):\n"
        "        log.append(RecordKind.FEEDBACK, {'event_id': f'{sys.argv[2]}-{t}-{i}'})\n"
        "threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
    )
    workers = [subprocess.Popen([sys.executable, "-c", code, str(path), f"p{n}"]) for n in range(4)]
    for worker in workers:
        assert worker.wait(timeout=60) == 0
    result = verify_chain(path)
    assert result.ok, result
    assert result.records == 4 * 4 * 50


def test_a_torn_last_line_is_kept_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    with path.open("ab") as handle:
        handle.write(b'{"record":"feedback","ts":1')  # a crash mid-write
    write_log(path, 1)
    assert verify_chain(path).broken_line == 3


def test_cli_audit_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    runner = CliRunner()
    ok = runner.invoke(cli, ["audit", "verify", str(path)])
    assert ok.exit_code == 0 and "ok: 3 records" in ok.output
    tamper(path, 2, b'"e-1"', b'"e-7"')
    broken = runner.invoke(cli, ["audit", "verify", str(path)])
    assert broken.exit_code == 1 and "line 2" in broken.output


def test_cli_apikey_prints_a_key_and_its_digest() -> None:
    result = CliRunner().invoke(cli, ["apikey"])
    assert result.exit_code == 0
    lines = dict(line.split(":", 1) for line in result.output.splitlines()[:2])
    key, digest = lines["key"].strip(), lines["sha256"].strip()
    assert hashlib.sha256(key.encode()).hexdigest() == digest
    assert f"RISK_ENGINE_API_KEYS_SHA256='[\"{digest}\"]'" in result.output
    Settings(api_keys_sha256=[digest])  # accepted as configuration


def test_without_a_key_the_personal_fields_are_left_out(make_event: EventFactory) -> None:
    # The store was down: the decision had no profile, so no key to seal under.
    event = parse_event(make_event(user_id="u-degraded", amount=12.0, currency="EUR"))
    decision = Decision(event_id=event.event_id, score=0.5, decision="allow", model_version="m")
    assert decision.sealing is None
    record = decision_record(event, decision, {"f": 1.0}, Hasher("s"))
    assert record["sealed"] is None and "ref" not in record
    assert b"u-degraded" not in orjson.dumps(record) and b"s-1" not in orjson.dumps(record)
    assert not {"user_id", "ip", "amount", "device", "features"} & record.keys()
    assert record["event_id"] == event.event_id and record["decision"] == "allow"
