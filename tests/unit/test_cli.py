"""The `risk-engine` command: help, simulate, and backtest on good, bad and missing input."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from risk_engine.cli import app
from risk_engine.events import parse_event_line
from risk_engine.offline.logs import LogReport, read_records

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


# -- every offline command: a bad line is named with its file and line, counted, skipped ---

LABELS = SAMPLE.with_name("labels.jsonl")
PART = 1500  # sample events (and their labels) enough to train on


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Part of the sample with one bad line in each input: events line 5, labels line 7."""
    root = tmp_path_factory.mktemp("bad-inputs")
    events = sample_lines(PART)
    events.insert(4, b'{"event_id": "torn",')
    with LABELS.open("rb") as handle:
        labels = [line.rstrip(b"\n") for _, line in zip(range(PART), handle, strict=False)]
    labels.insert(6, b'{"event_id": "e-x", "is_attack": "yes"}')
    first = orjson.loads(events[0])["event_id"]
    paths = {
        "events": root / "events.jsonl",
        "labels": root / "labels.jsonl",
        "feedback": root / "feedback.jsonl",
    }
    paths["events"].write_bytes(b"\n".join(events) + b"\n")
    paths["labels"].write_bytes(b"\n".join(labels) + b"\n")
    paths["feedback"].write_text(
        f'{{"event_id": "{first}", "label": "confirmed_legit"}}\n{{"label": "confirmed_fraud"}}\n'
    )
    return paths


def test_train_names_a_bad_event_line_and_a_bad_label_line(
    bad_inputs: dict[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "model.npz"
    result = runner.invoke(
        app,
        [
            "train", str(bad_inputs["events"]),
            "--labels", str(bad_inputs["labels"]),
            "--trees", "20",
            "--no-synthesize-attacks",
            "--out", str(model),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"skipped {bad_inputs['events']}, line 5: not valid JSON" in result.stderr
    assert f"skipped {bad_inputs['labels']}, line 7: label" in result.stderr
    assert f"{PART} events" in result.stdout and "2 bad lines" in result.stdout
    assert model.exists()


def test_evaluate_names_bad_lines_of_events_labels_and_decisions(
    bad_inputs: dict[str, Path], tmp_path: Path
) -> None:
    decisions = tmp_path / "decisions.jsonl"
    done = runner.invoke(app, ["backtest", str(bad_inputs["events"]), "--out", str(decisions)])
    assert done.exit_code == 0, done.output
    lines = decisions.read_bytes().splitlines()
    lines.insert(2, b'{"event_id": "e-y", "score": "high", "decision": "allow"}')
    decisions.write_bytes(b"\n".join(lines) + b"\n")
    figures = tmp_path / "figures.json"
    result = runner.invoke(
        app,
        [
            "evaluate", str(bad_inputs["events"]),
            "--labels", str(bad_inputs["labels"]),
            "--decisions", str(decisions),
            "--json", str(figures),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"skipped {bad_inputs['events']}, line 5: not valid JSON" in result.stderr
    assert f"skipped {bad_inputs['labels']}, line 7: label" in result.stderr
    assert f"skipped {decisions}, line 3: score" in result.stderr
    assert "3 bad lines skipped" in result.stdout
    inputs = orjson.loads(figures.read_bytes())["inputs"]
    assert inputs["bad_lines"] == 3 and len(inputs["problems"]) == 3


def test_calibrate_names_bad_lines_of_events_labels_and_feedback(
    bad_inputs: dict[str, Path], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    result = runner.invoke(
        app,
        [
            "calibrate", str(bad_inputs["events"]),
            "--labels", str(bad_inputs["labels"]),
            "--feedback", str(bad_inputs["feedback"]),
            "--min-legit", "100",
            "--out", str(policy),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"skipped {bad_inputs['events']}, line 5: not valid JSON" in result.stderr
    assert f"skipped {bad_inputs['labels']}, line 7: label" in result.stderr
    assert f"skipped {bad_inputs['feedback']}, line 2: event_id" in result.stderr
    assert "3 bad lines skipped" in result.stderr
    assert policy.exists()


def test_backtest_reads_a_glob_and_writes_gzip_or_parquet_by_name(
    bad_inputs: dict[str, Path], tmp_path: Path
) -> None:
    plain, packed, table = (tmp_path / n for n in ("d.jsonl", "d.jsonl.gz", "d.parquet"))
    pattern = str(bad_inputs["events"].parent / "ev*.jsonl")
    for out in (plain, packed, table):
        result = runner.invoke(app, ["backtest", pattern, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert f"{bad_inputs['events']}, line 5" in result.stderr
        assert "1 bad lines skipped" in result.stderr

    def same(decision: dict[str, Any]) -> dict[str, Any]:
        # Decision ids are random; Parquet gives absent fields as nulls (dropped on reading).
        return {k: v for k, v in decision.items() if k != "decision_id" and v is not None}

    expected = [same(orjson.loads(line)) for line in plain.read_bytes().splitlines()]
    assert len(expected) == PART
    from_gzip = [orjson.loads(line) for line in gzip.decompress(packed.read_bytes()).splitlines()]
    from_parquet = list(read_records([table], dict, LogReport()))
    assert [same(d) for d in from_gzip] == expected
    assert [same(d) for d in from_parquet] == expected
    assert pq.ParquetFile(table).metadata.num_rows == PART


def test_simulate_writes_each_output_in_the_format_its_name_says(tmp_path: Path) -> None:
    common = ["simulate", "--users", "5", "--days", "3", "--seed", "3"]
    plain = [tmp_path / n for n in ("ev.jsonl", "lab.jsonl", "out.jsonl")]
    other = [tmp_path / n for n in ("ev.jsonl.gz", "lab.parquet", "out.parquet")]
    for events, labels, outcomes in (plain, other):
        result = runner.invoke(
            app,
            [*common, "--out", str(events), "--labels", str(labels), "--outcomes", str(outcomes)],
        )
        assert result.exit_code == 0, result.output
    assert gzip.decompress(other[0].read_bytes()) == plain[0].read_bytes()
    for a, b in zip(plain[1:], other[1:], strict=True):
        report = LogReport()
        assert list(read_records([b], dict, report)) == [
            {k: v for k, v in orjson.loads(line).items() if v is not None}
            for line in a.read_bytes().splitlines()
        ]
        assert report.bad == 0
