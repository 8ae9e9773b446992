"""Evaluation figures on a tiny decisions + labels pair whose numbers are known by hand."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest

from risk_engine.offline.evaluate import (
    build_run,
    figures,
    threshold_at_rate,
    threshold_for_count,
    write_json,
)
from risk_engine.offline.labels import LabelledRun, load_labels
from risk_engine.offline.logs import LogReport

START = datetime(2026, 2, 1, tzinfo=UTC)

# (event id, user, minute, attack type or None, engine score, engine decision, baseline)
# u1 has 14 events (the 11th onwards are "established": >= 10 earlier events), u2 has 4.
ROWS: list[tuple[str, str, int, str | None, float, str, float]] = [
    *[(f"a{k:02d}", "u1", 2 * k, None, k / 100, "allow", float(k)) for k in range(1, 12)],
    ("a12", "u1", 24, "foreign_takeover", 0.90, "deny", 30.0),
    ("a13", "u1", 26, "session_hijack", 0.45, "allow", 12.0),
    ("a14", "u1", 28, None, 0.50, "step_up", 2.0),
    ("b01", "u2", 1, None, 0.20, "allow", 20.0),
    ("b02", "u2", 3, None, 0.30, "allow", 0.5),
    ("b03", "u2", 5, None, 0.40, "allow", 0.6),
    ("b04", "u2", 7, "credential_stuffing", 0.95, "step_up", 5.0),
]


@pytest.fixture
def run(tmp_path: Path) -> LabelledRun:
    return _run(tmp_path)


def _run(tmp_path: Path, routine: frozenset[str] = frozenset()) -> LabelledRun:
    """The run of ROWS; the attacks named in ``routine`` are labelled the owner's routine."""
    events, labels, decisions = (tmp_path / f"{n}.jsonl" for n in ("events", "labels", "dec"))
    lines = []
    for event_id, user, minute, _, _, _, _ in ROWS:
        stamp = (START + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ")
        record = {"event_id": event_id, "timestamp": stamp, "user_id": user}
        lines.append(orjson.dumps({**record, "action": "login", "ip": "81.2.69.160"}))
    events.write_bytes(b"\n".join(reversed(lines)) + b"\n")  # out of time order on purpose
    labels.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "event_id": r[0],
                    "is_attack": r[3] is not None,
                    "attack_type": r[3],
                    "scenario": "owner_routine" if r[0] in routine else r[3],
                }
            )
            + b"\n"
            for r in ROWS
        )
    )
    decisions.write_bytes(
        b"".join(
            orjson.dumps({"event_id": r[0], "score": r[4], "decision": r[5], "reasons": []}) + b"\n"
            for r in ROWS
        )
    )
    baseline = [(r[0], r[6]) for r in ROWS]
    return build_run(events, load_labels([labels], LogReport()), decisions, baseline)


def test_thresholds_flag_at_most_the_rate_and_never_split_ties() -> None:
    scores = np.asarray([0.9, 0.8, 0.8, 0.5, 0.1])
    assert (scores >= threshold_at_rate(scores, 0.2)).sum() == 1
    assert (scores >= threshold_at_rate(scores, 0.4)).sum() == 1  # the tie at 0.8 stays out
    assert (scores >= threshold_at_rate(scores, 0.6)).sum() == 3
    assert threshold_at_rate(scores, 1.0) == -math.inf
    assert threshold_at_rate(scores, 0.0) > 0.9
    assert threshold_for_count(np.asarray([0.97, 0.5]), 0, decimals=6) == 0.970001
    assert threshold_for_count(np.asarray([0.97, 0.5]), 1, decimals=6) == 0.500001


def test_prior_events_are_counted_per_user_in_time_order(run: LabelledRun) -> None:
    prior = dict(zip(run.event_ids, run.prior_events.tolist(), strict=True))
    assert prior["a01"] == 0 and prior["a11"] == 10 and prior["a14"] == 13
    assert prior["b04"] == 3
    established = {e for e, flag in zip(run.event_ids, run.established, strict=True) if flag}
    assert established == {"a11", "a12", "a13", "a14"}
    assert run.event_ids[:3] == ["b01", "a01", "b02"]  # by timestamp, not file order


def test_figures_for_all_events(run: LabelledRun) -> None:
    scope = figures(run)["scopes"]["all"]
    assert (scope["events"], scope["legit"], scope["attacks"]) == (18, 15, 3)
    engine = scope["engine"]
    assert engine["legit_challenge_rate"] == pytest.approx(1 / 15)  # a14 stepped up
    assert engine["legit_deny_rate"] == 0.0
    assert engine["catch_rate"] == pytest.approx(2 / 3)
    assert engine["catch_by_type"] == {
        "credential_stuffing": 1.0,
        "foreign_takeover": 1.0,
        "session_hijack": 0.0,
    }
    # 0.90 and 0.95 outrank all 15 legitimate scores, 0.45 outranks 14 of them (not 0.50).
    assert engine["roc_auc"] == pytest.approx(44 / 45)
    # Matched at 1/15: one legitimate event may be flagged, the top one (b01 at 20), so the
    # threshold sits just above the second (11): a12 (30) and a13 (12) are caught, b04 (5) not.
    baseline = scope["baseline"]
    assert baseline["threshold"] == math.nextafter(11.0, math.inf)
    assert baseline["legit_challenge_rate"] == pytest.approx(1 / 15)
    assert baseline["catch_by_type"] == {
        "credential_stuffing": 0.0,
        "foreign_takeover": 1.0,
        "session_hijack": 1.0,
    }
    # At 2% of 15 legitimate events none may be flagged: above the top legitimate score.
    assert scope["engine_at_fixed"]["legit_challenge_rate"] == 0.0
    assert scope["engine_at_fixed"]["catch_rate"] == pytest.approx(2 / 3)  # 0.90, 0.95 > 0.50
    assert scope["baseline_at_fixed"]["catch_rate"] == pytest.approx(1 / 3)  # only 30 > 20


def test_figures_for_established_users(run: LabelledRun) -> None:
    scope = figures(run)["scopes"]["established"]
    assert (scope["events"], scope["legit"], scope["attacks"]) == (4, 2, 2)
    assert scope["engine"]["legit_challenge_rate"] == 0.5  # a14 of a11, a14
    assert scope["engine"]["catch_by_type"] == {"foreign_takeover": 1.0, "session_hijack": 0.0}
    # Matched at 1/2 within the scope: a11 (11) may be flagged, a14 (2) not.
    assert scope["baseline"]["threshold"] == math.nextafter(2.0, math.inf)
    assert scope["baseline"]["legit_challenge_rate"] == 0.5
    assert scope["baseline"]["catch_rate"] == 1.0
    assert scope["engine"]["roc_auc"] == pytest.approx(3 / 4)  # 0.90 > both, 0.45 > 0.11 only


def test_json_holds_every_figure(run: LabelledRun, tmp_path: Path) -> None:
    report = figures(run)
    write_json(report, tmp_path / "figures.json")
    loaded = orjson.loads((tmp_path / "figures.json").read_bytes())
    assert loaded["scopes"]["all"]["baseline"]["catch_rate"] == pytest.approx(2 / 3)
    assert set(loaded["scopes"]) == {"all", "established"}


def test_attacks_that_are_the_owners_routine_are_reported_apart(tmp_path: Path) -> None:
    """a13 (0.45, under one legitimate score) labelled as the owner's own routine:
    the AUC on every attack stays 44/45, without it every attack outranks every
    legitimate event, and with a third of the attacks at random 5/6 is the best."""
    plain = figures(_run(tmp_path))["scopes"]["all"]["engine"]
    assert "owner_routine" not in plain
    scope = figures(_run(tmp_path, frozenset({"a13"})))["scopes"]["all"]
    engine = scope["engine"]
    assert engine["roc_auc"] == pytest.approx(44 / 45)
    assert engine["owner_routine"] == {
        "attacks": 1,
        "share": pytest.approx(1 / 3),
        "roc_auc_without": 1.0,
        "roc_auc_bound": pytest.approx(5 / 6),
    }
    # Only in the scopes that hold it: a13 is an established user's, b04 is not.
    assert (
        figures(_run(tmp_path, frozenset({"b04"})))["scopes"]["established"]["engine"].get(
            "owner_routine"
        )
        is None
    )
