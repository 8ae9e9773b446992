"""The audit log: written by the service, chained under its key, readable by training."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from risk_engine.api.metrics import Metrics
from risk_engine.api.service import Service
from risk_engine.audit import (
    GENESIS,
    AuditKey,
    AuditLog,
    RecordKind,
    decision_record,
    verify_chain,
)
from risk_engine.cli import app as cli
from risk_engine.config import Settings
from risk_engine.decision import Decision
from risk_engine.engine import Engine
from risk_engine.errors import ConfigurationError
from risk_engine.events import parse_event
from risk_engine.offline.logs import LogReport, read_events
from risk_engine.privacy import Hasher
from risk_engine.scopes import Scope
from risk_engine.sealing import open_record
from tests.api.conftest import flush_audit

EventFactory = Callable[..., dict[str, Any]]
KEY = AuditKey("k3y-0f-the-audit-chain-for-tests-0123456789", source="test")
OTHER_KEY = AuditKey("an0ther-audit-key-for-rotation-tests-987654", source="test")
TORN = b'{"record":"feedback","ts":1'  # a crash mid-write


def fill(client: TestClient, make_event: EventFactory, n: int = 5) -> list[dict[str, Any]]:
    events = [make_event(user_id="u-audited", action="login") for _ in range(n)]
    for event in events:
        assert client.post("/v1/decisions", json=event).status_code == 200
    client.post("/v1/challenges/c-unknown/result", json={"passed": True, "method": "totp"})
    feedback = {"label": "confirmed_legit", "note": "called the customer"}
    assert client.post(f"/v1/events/{events[0]['event_id']}/feedback", json=feedback).is_success
    flush_audit(client)
    return events


def keys_of(client: TestClient) -> dict[str, str]:
    return client.app.state.service.engine.store.sealing_keys()  # type: ignore[attr-defined, no-any-return]


def test_the_service_writes_a_valid_chain(
    client: TestClient, settings: Settings, make_event: EventFactory
) -> None:
    events = fill(client, make_event)
    records = [orjson.loads(line) for line in settings.audit_path.read_bytes().splitlines()]
    assert [r["record"] for r in records] == ["decision"] * 5 + ["challenge_result", "feedback"]
    assert records[0]["prev_hash"] == GENESIS and "hash" not in records[0]
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
    result = verify_chain(settings.audit_path, [settings.resolve_audit_key()])
    assert result.ok and result.records == 7
    assert {r["key_id"] for r in records} == {settings.resolve_audit_key().id}


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


def write_log(path: Path, n: int, key: AuditKey = KEY, first: int = 0) -> None:
    log = AuditLog(path, key)
    for i in range(first, first + n):
        log.append(RecordKind.FEEDBACK, {"event_id": f"e-{i}", "label": "confirmed_legit"})
    log.close()


def tear(path: Path, data: bytes = TORN) -> None:
    with path.open("ab") as handle:
        handle.write(data)


def broken_lines(path: Path, keys: list[AuditKey] | None = None) -> list[int]:
    return [b.line for b in verify_chain(path, keys or [KEY]).breaks]


def legacy_line(record: dict[str, Any], prev: str) -> bytes:
    """A line of the unkeyed chain earlier versions wrote: anyone can compute one."""
    head = orjson.dumps({**record, "prev_hash": prev})
    return head[:-1] + b',"hash":"' + hashlib.sha256(head).hexdigest().encode() + b'"}'


def legacy_log(path: Path, n: int) -> None:
    prev, lines = GENESIS, []
    for i in range(n):
        line = legacy_line({"record": "feedback", "ts": 1.0, "event_id": f"e-{i}"}, prev)
        lines.append(line + b"\n")
        prev = hashlib.sha256(line).hexdigest()
    path.write_bytes(b"".join(lines))


def test_an_edited_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 6)
    tamper(path, 3, b"confirmed_legit", b"confirmed_fraud")
    result = verify_chain(path, [KEY])
    assert [b.line for b in result.breaks] == [3] and "edited" in result.breaks[0].problem
    assert result.records == 5


def test_an_edited_last_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 4)
    tamper(path, 4, b'"e-3"', b'"e-9"')
    assert broken_lines(path) == [4]


def test_a_removed_line_breaks_the_next_link(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 5)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2] + lines[3:]))
    result = verify_chain(path, [KEY])
    assert [b.line for b in result.breaks] == [3] and "prev_hash" in result.breaks[0].problem


def rechain_unkeyed(path: Path, suffix: bytes) -> None:
    """The old attack: recompute every line's plain sha256 and every link."""
    prev, out = GENESIS, []
    for raw in path.read_bytes().splitlines():
        record = orjson.loads(raw)
        record.pop("hmac")
        record["prev_hash"] = prev
        head = orjson.dumps(record)
        digest = hashlib.sha256(head).hexdigest()
        out.append(head[:-1] + suffix + digest.encode() + b'"}')
        prev = digest if suffix == b',"hmac":"' else hashlib.sha256(out[-1]).hexdigest()
    path.write_bytes(b"\n".join(out) + b"\n")


@pytest.mark.parametrize("suffix", [b',"hash":"', b',"hmac":"'], ids=["legacy", "keyed-form"])
def test_a_chain_recomputed_without_the_key_is_caught(tmp_path: Path, suffix: bytes) -> None:
    # Defect: the unkeyed chain let anyone who could write the file recompute it.
    path = tmp_path / "audit.jsonl"
    write_log(path, 4)
    tamper(path, 2, b"confirmed_legit", b"confirmed_fraud")
    rechain_unkeyed(path, suffix)
    result = verify_chain(path, [KEY])
    assert not result.ok
    assert result.records == 0


def test_each_record_names_its_key_and_keys_rotate(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    write_log(path, 2, key=OTHER_KEY, first=2)
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["key_id"] for r in records] == [KEY.id] * 2 + [OTHER_KEY.id] * 2
    assert KEY.id != OTHER_KEY.id and len(KEY.id) == 16
    assert verify_chain(path, [KEY, OTHER_KEY]).ok
    only_new = verify_chain(path, [OTHER_KEY])
    assert [b.line for b in only_new.breaks] == [1, 2]
    assert all(KEY.id in b.problem for b in only_new.breaks)
    assert only_new.records == 2


def test_a_short_or_empty_key_is_refused_naming_the_setting(tmp_path: Path) -> None:
    for value in ("", "   ", "short-key"):
        settings = Settings(var_dir=tmp_path, audit_key=value)
        with pytest.raises(ConfigurationError, match="RISK_ENGINE_AUDIT_KEY"):
            settings.resolve_audit_key()
    (tmp_path / "audit.key").write_text("short\n")
    with pytest.raises(ConfigurationError, match=r"audit\.key"):
        Settings(var_dir=tmp_path).resolve_audit_key()


def test_serve_refuses_a_short_key_before_starting(tmp_path: Path) -> None:
    env = {**os.environ, "RISK_ENGINE_AUDIT_KEY": "short", "RISK_ENGINE_VAR_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", "from risk_engine.cli import app; app()", "serve", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2
    assert "RISK_ENGINE_AUDIT_KEY" in done.stderr and "too short" in done.stderr


def test_the_key_is_generated_once_into_the_var_directory(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var")
    key = settings.resolve_audit_key()
    path = tmp_path / "var" / "audit.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert settings.resolve_audit_key().id == key.id
    assert Settings(var_dir=tmp_path / "var", audit_key="x" * 40).resolve_audit_key().id != key.id
    assert [p.name for p in path.parent.iterdir()] == ["audit.key"]  # nothing left aside


def test_appends_from_several_processes_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    key_file = tmp_path / "audit.key"
    key_file.write_text("0123456789abcdef" * 4 + "\n")
    code = (
        "import sys, threading\n"
        "from pathlib import Path\n"
        "from risk_engine.audit import AuditKey, AuditLog, RecordKind\n"
        "log = AuditLog(Path(sys.argv[1]), AuditKey.from_file(Path(sys.argv[3])))\n"
        "def run(t):\n"
        "    for i in range(50):\n"
        "        log.append(RecordKind.FEEDBACK, {'event_id': f'{sys.argv[2]}-{t}-{i}'})\n"
        "threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", code, str(path), f"p{n}", str(key_file)])
        for n in range(4)
    ]
    for worker in workers:
        assert worker.wait(timeout=60) == 0
    result = verify_chain(path, [AuditKey.from_file(key_file)])
    assert result.ok, result
    assert result.records == 4 * 4 * 50


def test_start_up_records_a_torn_line_and_chains_past_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Defect: the service appended after the torn bytes without a word.
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    offset = path.stat().st_size
    tear(path)
    with caplog.at_level(logging.WARNING, logger="risk_engine.audit"):
        AuditLog(path, KEY).close()  # a start-up after the crash
    assert any("torn line" in r.getMessage() for r in caplog.records)
    lines = path.read_bytes().splitlines()
    assert lines[2] == TORN
    recovery = orjson.loads(lines[3])
    assert recovery["record"] == "recovery"
    assert recovery["torn"] == {
        "offset": offset,
        "length": len(TORN),
        "sha256": hashlib.sha256(TORN).hexdigest(),
    }
    assert recovery["prev_hash"] == orjson.loads(lines[1])["hmac"]
    write_log(path, 2, first=2)
    result = verify_chain(path, [KEY])
    assert [b.line for b in result.breaks] == [3]
    assert "torn" in result.breaks[0].problem and "line 4" in result.breaks[0].problem
    assert result.records == 5  # two before, the recovery, two after


def test_an_append_finding_torn_bytes_records_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, KEY)
    log.append(RecordKind.FEEDBACK, {"event_id": "e-0"})
    tear(path)  # another worker crashed mid-write
    with caplog.at_level(logging.WARNING, logger="risk_engine.audit"):
        log.append(RecordKind.FEEDBACK, {"event_id": "e-1"})
    log.close()
    assert any("torn line" in r.getMessage() for r in caplog.records)
    kinds = [orjson.loads(line).get("record") for line in path.read_bytes().splitlines()[::2]]
    assert kinds == ["feedback", "recovery"]
    assert broken_lines(path) == [2]


def test_a_torn_line_does_not_hide_later_tampering(tmp_path: Path) -> None:
    # Defect: verify stopped at the torn line, so an edit after it was never seen.
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    tear(path)
    write_log(path, 4, first=2)  # lines 3 torn, 4 recovery, 5-8 records
    tamper(path, 6, b"confirmed_legit", b"confirmed_fraud")
    result = verify_chain(path, [KEY])
    assert [b.line for b in result.breaks] == [3, 6]
    assert "edited" in result.breaks[1].problem


def test_a_torn_complete_record_is_still_a_break(tmp_path: Path) -> None:
    # The write lost only its newline: the bytes hold a whole record, but the chain
    # goes on from the record before them, as the recovery says.
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    write_log(path, 1, first=3)
    result = verify_chain(path, [KEY])
    assert [b.line for b in result.breaks] == [3] and "torn" in result.breaks[0].problem
    assert result.records == 4


def test_an_unrecovered_torn_last_line_is_a_break(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    tear(path)
    result = verify_chain(path, [KEY])
    assert [b.line for b in result.breaks] == [3] and "incomplete" in result.breaks[0].problem


def test_a_forged_recovery_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    tamper(path, 2, b'"record":"feedback"', b'"record":"recovery"')
    assert broken_lines(path) == [2]


def test_an_old_unkeyed_log_is_sealed_when_the_log_opens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    legacy_log(path, 3)
    unsealed = verify_chain(path, [KEY])
    assert [b.line for b in unsealed.breaks] == [1] and "unkeyed" in unsealed.breaks[0].problem
    with caplog.at_level(logging.WARNING, logger="risk_engine.audit"):
        AuditLog(path, KEY).close()
    assert any("unkeyed records" in r.getMessage() for r in caplog.records)
    migration = orjson.loads(path.read_bytes().splitlines()[3])
    assert migration["record"] == "migration" and migration["key_id"] == KEY.id
    write_log(path, 2, first=3)
    result = verify_chain(path, [KEY])
    assert result.ok, result
    assert result.legacy == 3 and result.records == 3
    assert result.sealed_by == (4, migration["ts"])
    key_file = tmp_path / "audit.key"
    key_file.write_text("k3y-0f-the-audit-chain-for-tests-0123456789\n")
    shown = CliRunner().invoke(cli, ["audit", "verify", str(path), "--key-file", str(key_file)])
    assert shown.exit_code == 0
    assert "ok: 3 records (and 3 unkeyed legacy records, sealed at line 4" in shown.output
    # The keyed record's hmac covers the unkeyed chain it links to.
    tamper(path, 2, b'"e-1"', b'"e-7"')
    assert not verify_chain(path, [KEY]).ok


def test_an_unkeyed_line_after_keyed_ones_is_a_break(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    last = path.read_bytes().splitlines()[-1]
    tear(path, legacy_line({"record": "feedback", "event_id": "x"}, orjson.loads(last)["hmac"]))
    tear(path, b"\n")
    assert broken_lines(path) == [3]


@hypothesis_settings(max_examples=40, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, 7), st.integers(0, 10_000), st.sampled_from(b'ax0{}:," ')),
        min_size=1,
        max_size=3,
    )
)
def test_every_edited_line_is_reported(
    tmp_path_factory: pytest.TempPathFactory, edits: list[tuple[int, int, int]]
) -> None:
    path = tmp_path_factory.mktemp("chain") / "audit.jsonl"
    write_log(path, 8)
    original = path.read_bytes().splitlines()
    lines = [bytearray(line) for line in original]
    for index, position, byte in edits:
        line = lines[index]
        line[position % len(line)] = byte
    # A later edit may put back what an earlier one changed: compare the final lines.
    edited = {
        n + 1 for n, (new, old) in enumerate(zip(lines, original, strict=True)) if bytes(new) != old
    }
    path.write_bytes(b"".join(bytes(line) + b"\n" for line in lines))
    reported = set(broken_lines(path))
    assert edited <= reported
    assert reported <= edited | {n + 1 for n in edited}


def test_cli_audit_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISK_ENGINE_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("RISK_ENGINE_AUDIT_KEY", raising=False)
    key = Settings().resolve_audit_key()  # var/audit.key: what verify reads by default
    path = tmp_path / "audit.jsonl"
    write_log(path, 3, key=key)
    runner = CliRunner()
    ok = runner.invoke(cli, ["audit", "verify", str(path)])
    assert ok.exit_code == 0 and "ok: 3 records" in ok.output
    tear(path)
    write_log(path, 3, key=key, first=3)
    tamper(path, 2, b'"e-1"', b'"e-7"')
    tamper(path, 7, b'"e-4"', b'"e-8"')
    broken = runner.invoke(cli, ["audit", "verify", str(path)])
    assert broken.exit_code == 1
    assert [line.split(":")[0] for line in broken.output.splitlines()[:3]] == [
        "line 2",
        "line 4",
        "line 7",
    ]
    assert "3 break(s)" in broken.output


def test_cli_audit_verify_takes_key_files_and_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RISK_ENGINE_VAR_DIR", str(tmp_path / "nothing-here"))
    monkeypatch.delenv("RISK_ENGINE_AUDIT_KEY", raising=False)
    old, new = tmp_path / "old.key", tmp_path / "new.key"
    old.write_text("o" * 40 + "\n")
    new.write_text("n" * 40 + "\n")
    path = tmp_path / "audit.jsonl"
    write_log(path, 2, key=AuditKey.from_file(old))
    write_log(path, 2, key=AuditKey.from_file(new), first=2)
    runner = CliRunner()
    none = runner.invoke(cli, ["audit", "verify", str(path)])
    assert none.exit_code == 2 and "no audit key" in none.output
    one = runner.invoke(cli, ["audit", "verify", str(path), "--key-file", str(new)])
    assert one.exit_code == 1 and AuditKey.from_file(old).id in one.output
    both = ["audit", "verify", str(path), "--key-file", str(old), "--key-file", str(new)]
    assert runner.invoke(cli, both).exit_code == 0
    monkeypatch.setenv("RISK_ENGINE_AUDIT_KEY", "o" * 40)
    env = runner.invoke(cli, ["audit", "verify", str(path), "--key-file", str(new)])
    assert env.exit_code == 0 and "ok: 4 records" in env.output
    monkeypatch.setenv("RISK_ENGINE_AUDIT_KEY", "short")
    short = runner.invoke(cli, ["audit", "verify", str(path)])
    assert short.exit_code == 2 and "RISK_ENGINE_AUDIT_KEY" in short.output


def test_cli_apikey_prints_a_key_and_its_digest() -> None:
    result = CliRunner().invoke(cli, ["apikey", "--scope", "metrics"])
    assert result.exit_code == 0
    lines = dict(line.split(":", 1) for line in result.output.splitlines()[:2])
    key, digest = lines["key"].strip(), lines["sha256"].strip()
    assert hashlib.sha256(key.encode()).hexdigest() == digest
    name, value = result.output.splitlines()[2].split("=", 1)
    assert name.startswith("RISK_ENGINE_API_KEY_") and value == f"metrics:{digest}"
    # Accepted as configuration: the key, with its scope.
    assert Settings(api_keys={name[len("RISK_ENGINE_API_KEY_") :]: value}).key_table == (
        (digest, frozenset({Scope.METRICS})),
    )


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


@pytest.mark.parametrize("queue", [0, 256])
def test_a_failing_audit_disk_is_counted_never_a_failed_decision(
    make_settings: Callable[..., Settings],
    shared_engine: Engine,
    make_event: EventFactory,
    queue: int,
) -> None:
    # /dev/full fails every write with ENOSPC, as a full disk does.
    settings = make_settings(audit_log=Path("/dev/full"), audit_queue_records=queue)
    metrics = Metrics()
    service = Service(settings, shared_engine, metrics=metrics, owns_engine=False)
    try:
        decision = service.decide(parse_event(make_event()))
        service.flush_audit()
    finally:
        service.close()
    assert decision.decision.value in ("allow", "step_up", "deny")
    assert metrics.registry.get_sample_value("risk_engine_audit_errors_total") == 1
