"""Calibration: a strictly increasing map of raw scores into (0, 1), the ECDF of legit activity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from risk_engine.model.calibration import Calibration

# Raw scores on a 1e-6 grid: distinct values differ by far more than float rounding.
raw_scores = st.lists(
    st.integers(min_value=-10_000_000, max_value=10_000_000).map(lambda i: i / 1e6),
    min_size=1,
    max_size=3000,
)


def probes(values: np.ndarray, calibration: Calibration) -> np.ndarray:
    """The training values, their midpoints, and points a few tail scales beyond each end."""
    unique = np.unique(values)
    mids = (unique[:-1] + unique[1:]) / 2.0
    s = calibration.tail_scale
    tails = [unique[0] - k * s for k in (8.0, 3.0, 1.0, 0.1)] + [
        unique[-1] + k * s for k in (0.1, 1.0, 3.0, 8.0)
    ]
    return np.unique(np.concatenate([unique, mids, tails]))


@settings(max_examples=150, deadline=None)
@given(raw_scores)
def test_strictly_increasing_and_within_open_unit_interval(raw: list[float]) -> None:
    values = np.asarray(raw)
    calibration = Calibration.fit(values)
    xs = probes(values, calibration)
    ps = calibration(xs)
    assert np.all(ps > 0.0), ps.min()
    assert np.all(ps < 1.0), ps.max()
    assert np.all(np.diff(ps) > 0.0), xs[np.argmin(np.diff(ps))]


@settings(max_examples=100, deadline=None)
@given(raw_scores, st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=50))
def test_one_equals_the_array_path(raw: list[float], points: list[float]) -> None:
    calibration = Calibration.fit(np.asarray(raw))
    batch = calibration(np.asarray(points))
    singles = np.asarray([calibration.one(p) for p in points])
    np.testing.assert_allclose(singles, batch, rtol=0, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(raw_scores, st.lists(st.floats(-1e9, 1e9), min_size=2, max_size=200))
def test_never_decreasing_for_any_input(raw: list[float], points: list[float]) -> None:
    calibration = Calibration.fit(np.asarray(raw))
    xs = np.sort(np.asarray(points))
    ps = calibration(xs)
    assert np.all(np.diff(ps) >= 0.0)
    assert np.all((ps >= 0.0) & (ps <= 1.0))


@pytest.mark.parametrize("n", [500, 5000, 50_000])
def test_about_two_percent_of_legit_score_above_the_98_point(n: int) -> None:
    rng = np.random.default_rng(n)
    legit = rng.gamma(2.0, 1.0, size=n)
    calibration = Calibration.fit(legit)
    share_train = float((calibration(legit) > 0.98).mean())
    fresh = rng.gamma(2.0, 1.0, size=200_000)
    share_fresh = float((calibration(fresh) > 0.98).mean())
    assert share_train == pytest.approx(0.02, abs=max(0.004, 2.0 / n))
    assert share_fresh == pytest.approx(0.02, abs=max(0.006, 3.0 / np.sqrt(n) * 0.14))


def test_riskier_than_everything_seen_is_above_every_legit_score() -> None:
    legit = np.random.default_rng(0).normal(size=2000)
    calibration = Calibration.fit(legit)
    top = calibration(legit).max()
    assert calibration.one(float(legit.max()) + 1.0) > top
    assert calibration.one(float(legit.max()) + 10.0) > calibration.one(float(legit.max()) + 1.0)


def test_constant_scores_still_rank_around_the_constant() -> None:
    calibration = Calibration.fit(np.full(100, 0.3))
    assert calibration.one(0.2) < calibration.one(0.3) < calibration.one(0.4)


def test_round_trip_through_a_dict() -> None:
    calibration = Calibration.fit(np.random.default_rng(1).normal(size=500))
    again = Calibration.from_dict(calibration.to_dict())
    xs = np.linspace(-5, 5, 101)
    np.testing.assert_array_equal(again(xs), calibration(xs))


def test_fit_needs_a_score() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Calibration.fit(np.asarray([], dtype=np.float64))
