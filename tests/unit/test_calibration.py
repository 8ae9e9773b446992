"""Calibration: a strictly increasing map of raw scores into (0, 1), the ECDF of legit activity."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from risk_engine.model.artifact import default_model_path, load_artifact
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


def one_by_one(calibration: Calibration, xs: np.ndarray) -> np.ndarray:
    return np.asarray([calibration.one(float(x)) for x in xs])


def dense_grid(calibration: Calibration, rng: np.random.Generator) -> np.ndarray:
    """Every knot and its float neighbours, midpoints, random points, tails, non-finite values."""
    knots = calibration.knots_x
    lo, hi, s = float(knots[0]), float(knots[-1]), calibration.tail_scale
    return np.concatenate(
        [
            knots,
            np.nextafter(knots, np.inf),
            np.nextafter(knots, -np.inf),
            (knots[:-1] + knots[1:]) / 2.0,
            rng.uniform(lo, hi, 5000),
            lo - s * rng.exponential(3.0, 500),
            hi + s * rng.exponential(3.0, 500),
            [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e300, -1e300],
        ]
    )


@settings(max_examples=100, deadline=None)
@given(
    raw_scores,
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=50),
    st.lists(st.integers(0, 10**6), min_size=1, max_size=20),
)
def test_one_equals_the_array_path_to_the_bit(
    raw: list[float], points: list[float], picks: list[int]
) -> None:
    calibration = Calibration.fit(np.asarray(raw))
    # Anywhere, and exactly on the knots and next to them.
    knots = calibration.knots_x[np.asarray(picks) % calibration.knots_x.size]
    xs = np.concatenate([points, knots, np.nextafter(knots, np.inf), np.nextafter(knots, -np.inf)])
    np.testing.assert_array_equal(one_by_one(calibration, xs), calibration(xs))


def test_one_equals_the_array_path_on_the_default_models_calibrations() -> None:
    model = load_artifact(default_model_path()).model
    calibrations = [
        model.unsupervised_calibration_,
        model.supervised_calibration_,
        model.final_calibration_,
        *model.strata_calibration_.values(),
    ]
    rng = np.random.default_rng(0)
    for calibration in calibrations:
        assert calibration is not None
        xs = dense_grid(calibration, rng)
        np.testing.assert_array_equal(one_by_one(calibration, xs), calibration(xs))


def test_the_array_path_is_np_interp_inside_and_the_exponential_tails_outside() -> None:
    """The spelled-out interpolation is np.interp's formula: at most a rounding apart."""
    calibration = Calibration.fit(np.random.default_rng(3).gamma(2.0, 1.0, size=5000))
    xs, ps, s = calibration.knots_x, calibration.knots_p, calibration.tail_scale
    inside = np.sort(dense_grid(calibration, np.random.default_rng(4)))
    inside = inside[(inside >= xs[0]) & (inside <= xs[-1])]
    np.testing.assert_allclose(calibration(inside), np.interp(inside, xs, ps), rtol=0, atol=1e-15)
    above = xs[-1] + s * np.linspace(0.01, 20.0, 200)
    expected = 1.0 - (1.0 - ps[-1]) * np.exp(-(above - xs[-1]) / s)
    np.testing.assert_allclose(calibration(above), expected, rtol=1e-15, atol=0)
    below = xs[0] - s * np.linspace(0.01, 20.0, 200)
    expected = max(ps[0], 1e-6) * np.exp((below - xs[0]) / s)
    np.testing.assert_allclose(calibration(below), expected, rtol=1e-15, atol=0)


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


def test_pickles_hold_the_three_fields_only_and_load_as_before() -> None:
    calibration = Calibration.fit(np.random.default_rng(2).normal(size=800))
    state = calibration.__getstate__()
    assert sorted(state) == ["knots_p", "knots_x", "tail_scale"]
    xs = dense_grid(calibration, np.random.default_rng(5))
    expected = calibration(xs)
    for again in (
        pickle.loads(pickle.dumps(calibration)),
        copy.deepcopy(calibration),
        dataclasses.replace(calibration),
    ):
        np.testing.assert_array_equal(again(xs), expected)
        np.testing.assert_array_equal(one_by_one(again, xs), expected)
    # A pickle written before the derived lists existed restores from the three fields.
    legacy = Calibration.__new__(Calibration)
    legacy.__setstate__(state)
    np.testing.assert_array_equal(one_by_one(legacy, xs), expected)


def test_fit_needs_a_score() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Calibration.fit(np.asarray([], dtype=np.float64))
