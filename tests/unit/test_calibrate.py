"""Threshold calibration on synthetic scores: targets met, floors counted, policy valid."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from risk_engine.decision import Outcome
from risk_engine.offline.calibrate import (
    STEP,
    calibrate_policy,
    challenged,
    tradeoff_curve,
    write_policy,
)
from risk_engine.offline.labels import LabelledRun
from risk_engine.policy import Policy, load_policy, parse_policy


def make_run(
    legit: list[float],
    attacks: list[float],
    *,
    action: str = "login",
    codes: dict[int, tuple[str, ...]] | None = None,
    extra: tuple[str, int] | None = None,
) -> LabelledRun:
    """Events of one action; ``extra`` adds that many legitimate events of another action."""
    scores = [*legit, *attacks]
    actions = [action] * len(scores)
    attack = [False] * len(legit) + [True] * len(attacks)
    if extra is not None:
        scores += [0.5] * extra[1]
        actions += [extra[0]] * extra[1]
        attack += [False] * extra[1]
    n = len(scores)
    reasons = [(codes or {}).get(i, ()) for i in range(n)]
    return LabelledRun(
        event_ids=[f"e-{i}" for i in range(n)],
        actions=actions,
        attack=np.asarray(attack, dtype=bool),
        attack_types=np.asarray(["takeover" if a else "" for a in attack], dtype=str),
        prior_events=np.zeros(n, dtype=np.int64),
        score=np.asarray(scores, dtype=np.float64),
        outcome=np.zeros(n, dtype=np.int8),
        reason_codes=reasons,
    )


def legit_rate(run: LabelledRun, policy: Policy, action: str = "login") -> float:
    rows = (np.asarray(run.actions) == action) & ~run.attack
    return float(challenged(run, policy)[rows].mean())


GRID = [i / 1000 for i in range(1000)]  # 1,000 legitimate scores 0.000 ... 0.999
ATTACKS = [0.99 + i / 10_000 for i in range(50)]


def test_step_up_is_the_smallest_threshold_meeting_the_target() -> None:
    run = make_run(GRID, ATTACKS)
    # min_legit 50 at 2% asks for one flaggable event: 1,000 legit events at 0.1% give it.
    policy, report = calibrate_policy(run, load_policy(), target_challenge=0.02, min_legit=50)
    login = policy.classes["login"]
    # 20 of 1,000 may be challenged: 0.980 ... 0.999; the next grid value down adds 0.979.
    assert login.step_up == 0.979001
    assert legit_rate(run, policy) == 0.02
    lower = policy.model_copy(deep=True)
    lower.classes["login"].step_up = login.step_up - STEP
    assert legit_rate(run, lower) > 0.02
    # 1 of 1,000 may be denied: 0.999.
    assert login.deny == 0.998001
    assert login.step_up < login.deny
    row = next(r for r in report if r.name == "login")
    assert row.challenge_rate[1] == 0.02
    assert row.deny_rate[1] == 0.001
    assert row.catch_rate[1] == pytest.approx(1.0)  # every attack scores >= 0.99


def test_deny_is_kept_without_enough_legitimate_events_for_its_target() -> None:
    policy, report = calibrate_policy(make_run(GRID, ATTACKS), load_policy(), min_legit=200)
    assert policy.classes["login"].deny == load_policy().classes["login"].deny
    assert policy.classes["login"].step_up == 0.979001
    assert "deny kept" in next(r for r in report if r.name == "login").note


def test_floors_count_against_the_budget() -> None:
    floored = dict.fromkeys(range(10), ("impossible_travel",))  # 10 low-scoring legit events
    run = make_run(GRID, ATTACKS, codes=floored)
    policy, _ = calibrate_policy(run, load_policy(), target_challenge=0.02)
    assert policy.classes["login"].step_up == 0.989001  # only 10 left for the score
    assert legit_rate(run, policy) == 0.02


def test_floors_over_the_budget_leave_the_score_its_threshold() -> None:
    """Floors alone spend the budget: the step-up stays the policy's, never just under deny.

    Pushed to just under deny, the class would challenge on floors only: a takeover that
    raises no floor would pass at any score below deny (seen in a label-free
    calibration of the account class, where first uses fill the budget).
    """
    floored = dict.fromkeys(range(30), ("impossible_travel",))  # 3% of legit: over 2%
    run = make_run(GRID, [0.995] * 20, codes=floored)
    base = load_policy()
    policy, report = calibrate_policy(run, base, target_challenge=0.02, min_legit=50)
    login = policy.classes["login"]
    assert login.step_up == base.classes["login"].step_up
    assert login.step_up < 0.995 < login.deny
    row = next(r for r in report if r.name == "login")
    assert row.catch_rate[1] == pytest.approx(1.0)
    assert "floors alone exceed the challenge target" in row.note


def test_ceilings_are_counted_as_the_policy_decides() -> None:
    """An event the policy caps at step-up is never denied on its score: not in deny's budget."""
    capped = dict.fromkeys(range(990, 1000), ("crowded_network",))  # the 10 highest scores
    run = make_run(GRID, ATTACKS, codes=capped)
    base = load_policy()
    assert base.ceilings["crowded_network"] is Outcome.STEP_UP
    policy, report = calibrate_policy(run, base, target_challenge=0.02, min_legit=50)
    login = policy.classes["login"]
    # 1 of 1,000 may be denied among the scores that can be: 0.989, the highest uncapped.
    assert login.deny == 0.988001
    assert next(r for r in report if r.name == "login").deny_rate[1] == 0.001
    # Capped at step-up, the top ten are still challenged: the step-up is as without them.
    assert login.step_up == 0.979001


def test_challenged_is_what_the_policy_decides() -> None:
    data = load_policy().model_dump(mode="json")
    data["ceilings"] = {"crowded_network": "allow"}
    policy = parse_policy(data, "test")
    codes = {0: ("crowded_network",), 1: ("crowded_network", "impossible_travel")}
    run = make_run([0.999, 0.999, 0.999, 0.1], [], codes=codes)
    expected = [
        policy.decide(a, float(s), list(c))[1] is not Outcome.ALLOW
        for a, s, c in zip(run.actions, run.score, run.reason_codes, strict=True)
    ]
    assert challenged(run, policy).tolist() == expected == [False, True, True, False]


def test_small_classes_keep_their_thresholds() -> None:
    run = make_run(GRID, ATTACKS, extra=("transfer", 50))
    base = load_policy()
    policy, report = calibrate_policy(run, base, min_legit=200)
    assert policy.classes["money"] == base.classes["money"]
    assert next(r for r in report if r.name == "money").kept


def test_ties_at_the_top_keep_step_up_below_deny() -> None:
    legit = [0.3] * 900 + [1.0] * 100  # 10% of legitimate events at the maximum score
    run = make_run(legit, [1.0] * 10)
    policy, report = calibrate_policy(run, load_policy(), target_challenge=0.02, min_legit=50)
    login = policy.classes["login"]
    assert login.deny == 1.0
    assert login.step_up < login.deny
    assert next(r for r in report if r.name == "login").challenge_rate[1] == 0.1  # not met


def test_written_policy_loads_validates_and_has_a_new_version(tmp_path: Path) -> None:
    base = load_policy()
    policy, _ = calibrate_policy(make_run(GRID, ATTACKS), base, today="2026-12-01")
    assert re.fullmatch(r"2026-12-01\.[0-9a-f]{6}", policy.version)
    assert policy.version != base.version
    loaded = write_policy(policy, tmp_path / "policy.toml")
    assert loaded == load_policy(tmp_path / "policy.toml")
    assert loaded.classes["login"].step_up == 0.979001
    assert all(c.step_up < c.deny for c in loaded.classes.values())
    assert loaded.floors == base.floors


def test_tradeoff_curve_is_monotone() -> None:
    scores = np.asarray([*GRID[::10], *ATTACKS])
    attack = np.asarray([False] * 100 + [True] * 50)
    curve = tradeoff_curve(scores, attack)
    assert np.all(np.diff(curve.thresholds) < 0)
    assert np.all(np.diff(curve.legit_rate) >= 0) and np.all(np.diff(curve.catch_rate) >= 0)
    assert curve.legit_rate[-1] == 1.0 and curve.catch_rate[-1] == 1.0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 10**6), min_size=250, max_size=600),
    st.floats(0.005, 0.2),
)
def test_any_scores_meet_the_target(ticks: list[int], target: float) -> None:
    run = make_run([t / 10**6 for t in ticks], [0.99])
    policy, _ = calibrate_policy(run, load_policy(), target_challenge=target, target_deny=0.001)
    login = policy.classes["login"]
    # Thresholds are rounded to STEP: a step-up held just below deny is deny - STEP, rounded.
    assert legit_rate(run, policy) <= target + 1e-12 or login.step_up == pytest.approx(
        login.deny - STEP, abs=1e-12
    )
    assert 0.0 < login.step_up < login.deny <= 1.0


def test_without_labels_deny_is_never_lowered() -> None:
    """A denied user gets no step-up to fail, so no observed label says a denial was right.

    Seen in the deployment flow (mobile-heavy world): a label-free calibration spent the
    whole deny budget, read's deny fell from 0.999993 to 0.979, and legitimate users on
    an office network in another city were denied for whole sessions (10% of the
    corporate context), where a step-up they could pass would have ended it.
    """
    run = make_run(GRID, ATTACKS)
    base = load_policy()
    assert base.classes["login"].deny > 0.998001
    labelled, _ = calibrate_policy(run, base, target_challenge=0.02, min_legit=50)
    assert labelled.classes["login"].deny == 0.998001  # labels: the target is spent
    policy, report = calibrate_policy(
        run, base, target_challenge=0.02, min_legit=50, labelled=False
    )
    login = policy.classes["login"]
    assert login.deny == base.classes["login"].deny
    assert login.step_up == 0.979001  # the step-up is still calibrated: a user can pass it
    row = next(r for r in report if r.name == "login")
    assert row.deny_rate[1] == 0.0
    assert "deny not lowered without labels" in row.note


def test_without_labels_deny_is_raised_to_meet_its_target() -> None:
    """The other way is safe: a deny that denies more than the target is raised."""
    data = load_policy().model_dump(mode="json")
    data["classes"]["login"]["step_up"] = 0.5
    data["classes"]["login"]["deny"] = 0.9  # denies 10% of the grid
    base = parse_policy(data, "test")
    policy, report = calibrate_policy(
        make_run(GRID, ATTACKS), base, target_challenge=0.02, min_legit=50, labelled=False
    )
    assert policy.classes["login"].deny == 0.998001
    assert next(r for r in report if r.name == "login").deny_rate[1] == 0.001
