"""The `risk-engine` command: help, simulate, and backtest on good, bad and missing input."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from risk_engine.cli import app
from risk_engine.events import parse_event_line

SAMPLE = Path(__file__).parents[2] / "data" / "samples" / "events.jsonl"
runner = CliRunner()


def sample_lines(n: int) -> list[bytes]:
    with SAMPLE.open("rb") as handle:
        return [line.rstrip(b"\n") for _, line in zip(range(n), handle, strict=False)]


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("backtest", "simulate", "train"):
        assert command in result.stdout


def test_version_prints_the_package_version() -> None:
    from risk_engine import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"risk-engine {__version__}"


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "risk-engine"
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable}")
    done = subprocess.run(
        [str(script), "backtest", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "--out" in done.stdout and "--outcomes" in done.stdout


def test_simulate_writes_contract_valid_events(tmp_path: Path) -> None:
    events, labels, outcomes = (tmp_path / n for n in ("ev.jsonl", "lab.jsonl", "out.jsonl"))
    result = runner.invoke(
        app,
        [
            "simulate",
            "--out", str(events),
            "--labels", str(labels),
            "--outcomes", str(outcomes),
            "--users", "4",
            "--days", "3",
            "--seed", "3",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = events.read_bytes().splitlines()
    assert len(lines) > 10
    parsed = [parse_event_line(line, line=i) for i, line in enumerate(lines, start=1)]
    ids = [e.event_id for e in parsed]
    assert len(set(ids)) == len(ids)
    label_ids = [orjson.loads(line)["event_id"] for line in labels.read_bytes().splitlines()]
    assert sorted(label_ids) == sorted(ids)
    for line in outcomes.read_bytes().splitlines():
        assert orjson.loads(line)["step_up"] in ("passed", "failed")


def test_simulate_rejects_a_bad_start_date(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "simulate",
            "--out",
            str(tmp_path / "e"),
            "--labels",
            str(tmp_path / "l"),
            "--start",
            "05/01/2026",
        ],
    )
    assert result.exit_code != 0
    assert "--start" in result.stderr
    assert "Traceback" not in result.output


@pytest.fixture
def events_with_bad_lines(tmp_path: Path) -> Path:
    lines = sample_lines(8)
    lines.insert(3, b'{"event_id": "broken",')  # line 4
    lines.append(
        b'{"event_id":"x","timestamp":"2026-01-05T09:00:00Z","user_id":"u",'
        b'"action":"login","ip":"999.0.0.1"}'
    )  # line 10
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_backtest_with_bad_lines_exits_zero_and_names_them(
    events_with_bad_lines: Path, tmp_path: Path
) -> None:
    out = tmp_path / "decisions.jsonl"
    result = runner.invoke(app, ["backtest", str(events_with_bad_lines), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "line 4" in result.stderr
    assert "line 10" in result.stderr and "ip" in result.stderr
    assert "2 bad lines" in result.stderr
    decisions = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(decisions) == 8
    for decision in decisions:
        assert decision["decision"] in {"allow", "step_up", "deny"}
        assert 0.0 <= decision["score"] <= 1.0


def test_backtest_on_a_missing_file_fails_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "absent.jsonl"
    result = runner.invoke(app, ["backtest", str(missing), "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code != 0
    assert "not found" in result.stderr and str(missing) in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.jsonl", b""),
        ("garbage.jsonl", b"not json\nstill not json\n"),
        ("broken.jsonl.gz", b"not gzip"),
        ("truncated.jsonl.gz", gzip.compress(b"x" * 10_000)[:40]),
    ],
)
def test_backtest_on_unusable_input_fails_clearly(
    tmp_path: Path, name: str, content: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    result = runner.invoke(app, ["backtest", str(path), "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code != 0
    assert result.stderr.startswith("risk-engine: error:")
    assert str(path) in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_backtest_reports_bad_outcome_lines(events_with_bad_lines: Path, tmp_path: Path) -> None:
    first = orjson.loads(sample_lines(1)[0])["event_id"]
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text(
        f'{{"event_id": "{first}", "step_up": "passed"}}\n'
        "not json\n"
        f'{{"event_id": "{first}", "step_up": "maybe"}}\n'
    )
    out = tmp_path / "decisions.jsonl"
    result = runner.invoke(
        app,
        ["backtest", str(events_with_bad_lines), "--out", str(out), "--outcomes", str(outcomes)],
    )
    assert result.exit_code == 0, result.output
    assert f"{outcomes}, line 2" in result.stderr
    assert f"{outcomes}, line 3" in result.stderr and "step_up" in result.stderr
    assert len(out.read_bytes().splitlines()) == 8


def test_backtest_with_a_missing_outcomes_file_fails_clearly(
    events_with_bad_lines: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-outcomes.jsonl"
    result = runner.invoke(
        app,
        [
            "backtest",
            str(events_with_bad_lines),
            "--out",
            str(tmp_path / "o.jsonl"),
            "--outcomes",
            str(missing),
        ],
    )
    assert result.exit_code != 0
    assert str(missing) in result.stderr
    assert "Traceback" not in result.output


def test_serve_refuses_several_workers_on_the_memory_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store = "memory://"
    monkeypatch.chdir(tmp_path)
    # serve exports its options for the workers: set here, they are restored after.
    monkeypatch.setenv("RISK_ENGINE_HOST", "127.0.0.1")
    monkeypatch.setenv("RISK_ENGINE_PORT", "8000")
    monkeypatch.setenv("RISK_ENGINE_STORE", store)
    result = runner.invoke(app, ["serve", "--workers", "2", "--store", store])
    assert result.exit_code == 2
    assert "--workers 2 needs a store the worker processes share" in result.output
    assert "redis://" in result.output
