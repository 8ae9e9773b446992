"""Going live without labels: the time split, labels a deployment observes, and the flow.

The flow runs through the command line on a small simulated log: train and
calibrate on the first days without labels, then check the later days.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from risk_engine.audit import AuditKey, AuditLog, RecordKind
from risk_engine.cli import app
from risk_engine.errors import ConfigurationError
from risk_engine.offline.calibrate import observed_labels
from risk_engine.offline.deployment import DAY, split_log
from risk_engine.offline.labels import audit_labels, load_labels
from risk_engine.offline.logs import LogReport
from risk_engine.policy import load_policy

runner = CliRunner()
TARGET = 0.08
SHADOW_DAYS = 40


def _lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small simulated log of 60 days with labels (contexts) and step-up outcomes."""
    root = tmp_path_factory.mktemp("deployment")
    paths = {k: root / f"{k}.jsonl" for k in ("events", "labels", "outcomes")}
    result = runner.invoke(
        app,
        [
            "simulate",
            "--users", "100",
            "--days", "60",
            "--seed", "23",
            "--world", "retail",
            "--out", str(paths["events"]),
            "--labels", str(paths["labels"]),
            "--outcomes", str(paths["outcomes"]),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return paths


def test_split_cuts_at_utc_midnight_after_the_days(log: dict[str, Path], tmp_path: Path) -> None:
    first = tmp_path / "first.jsonl"
    report = LogReport()
    split = split_log(log["events"], 7, first, report)
    events = _lines(log["events"])
    assert report.events == len(events) and report.bad == 0
    stamps = [
        (str(e["event_id"]), np.datetime64(str(e["timestamp"]).rstrip("Z")).astype("int64"))
        for e in events
    ]
    start = min(t for _, t in stamps) // DAY * DAY
    assert split.start == start and split.cut == start + 7 * DAY
    before = {e for e, t in stamps if t < split.cut}
    assert split.first_ids == before == {str(e["event_id"]) for e in _lines(first)}
    assert split.first_events + split.later_events == len(events)
    written = [str(e["timestamp"]) for e in _lines(first)]
    assert written == sorted(written)


def test_a_split_that_leaves_nothing_to_judge_is_refused(
    log: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match="nothing left to judge"):
        split_log(log["events"], 61, tmp_path / "first.jsonl", LogReport())
    with pytest.raises(ConfigurationError, match="at least 1"):
        split_log(log["events"], 0, tmp_path / "first.jsonl", LogReport())


def test_observed_labels_are_failed_step_ups_the_engine_asked_for_and_feedback(
    tmp_path: Path,
) -> None:
    decisions = tmp_path / "decisions.jsonl"
    outcomes = tmp_path / "outcomes.jsonl"
    feedback = tmp_path / "feedback.jsonl"
    decided = {"a": "step_up", "b": "allow", "c": "step_up", "d": "deny", "e": "allow"}
    decisions.write_bytes(
        b"".join(
            orjson.dumps({"event_id": k, "score": 0.5, "decision": v, "reasons": []}) + b"\n"
            for k, v in decided.items()
        )
    )
    results = {"a": "failed", "b": "failed", "c": "passed", "d": "failed", "e": "passed"}
    outcomes.write_bytes(
        b"".join(orjson.dumps({"event_id": k, "step_up": v}) + b"\n" for k, v in results.items())
        + b"{torn\n"
    )
    feedback.write_bytes(orjson.dumps({"event_id": "e", "label": "confirmed_fraud"}) + b"\n")
    report = LogReport()
    labels = observed_labels(
        decisions, outcomes, load_labels([feedback], LogReport()), report=report
    )
    assert {k for k, v in labels.items() if v.is_attack} == {"a", "e"}
    assert report.bad == 1 and report.problems[0].line == len(results) + 1  # the torn line
    assert observed_labels(decisions, None, report=LogReport()) == {}


def test_an_audit_log_gives_its_failed_step_ups_and_feedback(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, AuditKey("k" * 40, source="test"))
    log.append(RecordKind.CHALLENGE_RESULT, {"event_id": "e-1", "outcome": "failed"})
    log.append(RecordKind.CHALLENGE_RESULT, {"event_id": "e-2", "outcome": "passed"})
    log.append(RecordKind.CHALLENGE_RESULT, {"outcome": "expired", "error": "challenge_expired"})
    log.append(RecordKind.FEEDBACK, {"event_id": "e-3", "label": "confirmed_fraud"})
    log.append(RecordKind.FEEDBACK, {"event_id": "e-1", "label": "confirmed_legit"})
    labels = audit_labels([path])
    assert {k for k, v in labels.items() if v.is_attack} == {"e-3"}
    assert set(labels) == {"e-1", "e-2", "e-3"}


def test_go_live_flow_without_labels_meets_the_target_later(
    log: dict[str, Path], tmp_path: Path
) -> None:
    """Shadow days, train and calibrate on them without labels, enforce on the rest."""
    shadow = tmp_path / "shadow.jsonl"
    split = split_log(log["events"], SHADOW_DAYS, shadow, LogReport())
    model, policy = tmp_path / "model.joblib", tmp_path / "policy.toml"
    decisions = tmp_path / "decisions.jsonl"
    steps = [
        ["train", str(shadow), "--out", str(model), "--trees", "60"],
        [
            "calibrate", str(shadow),
            "--model", str(model),
            "--outcomes", str(log["outcomes"]),
            "--target-challenge", str(TARGET),
            "--min-legit", "100",
            "--out", str(policy),
        ],
        [
            "backtest", str(log["events"]),
            "--model", str(model),
            "--policy", str(policy),
            "--outcomes", str(log["outcomes"]),
            "--out", str(decisions),
        ],
    ]  # fmt: skip
    for argv in steps:
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, (argv[0], result.output)
    written = load_policy(policy)
    assert written.version != load_policy(None).version
    labels = load_labels([log["labels"]], LogReport())
    later = [
        d
        for d in _lines(decisions)
        if d["event_id"] not in split.first_ids and not labels[str(d["event_id"])].is_attack
    ]
    rate = sum(d["decision"] != "allow" for d in later) / len(later)
    # The bundled policy challenges far fewer: the later days follow the calibration.
    assert len(later) > 2000
    assert TARGET / 2 <= rate <= 1.5 * TARGET, rate


def test_evaluate_split_days_reports_the_deployment_flow(
    log: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "figures.json"
    result = runner.invoke(
        app,
        [
            "evaluate", str(log["events"]),
            "--labels", str(log["labels"]),
            "--split-days", str(SHADOW_DAYS),
            "--trees", "60",
            "--json", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "targets" in result.output and "by context" in result.output
    report = orjson.loads(out.read_bytes())
    split = split_log(log["events"], SHADOW_DAYS, tmp_path / "first.jsonl", LogReport())
    assert report["flow"]["shadow_events"] == split.first_events
    assert report["judged"]["events"] == split.later_events
    contexts = report["contexts"]
    assert {"home", "cellular"} <= set(contexts)
    assert sum(c["legit"] for c in contexts.values()) == report["judged"]["legit"]
    auc = report["judged"]["engine"]["roc_auc"]
    assert auc is not None and 0.5 < auc <= 1.0
    names = [t["target"] for t in report["targets"]]
    assert "ROC AUC" in names and any("compromised_device" in n for n in names)
    for check in report["targets"]:
        assert check["met"] is None or isinstance(check["met"], bool)
        assert check["value"] is None or math.isfinite(check["value"])


def test_evaluate_split_days_refuses_a_given_model(log: dict[str, Path]) -> None:
    result = runner.invoke(
        app,
        [
            "evaluate", str(log["events"]),
            "--labels", str(log["labels"]),
            "--split-days", "5",
            "--model", "models/default.joblib",
        ],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--split-days trains its own model" in result.output
