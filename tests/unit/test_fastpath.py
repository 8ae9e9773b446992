"""Flattened trees score exactly like scikit-learn; the model's single-row path like its batch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
from threadpoolctl import threadpool_limits

from risk_engine.model.artifact import default_model_path, load_artifact
from risk_engine.model.fastpath import FlatGradientBoosting, FlatIsolationForest
from training.labels import load_labels
from training.replay import replay

ROOT = Path(__file__).parents[2]
SAMPLE_EVENTS = ROOT / "data" / "samples" / "events.jsonl"
SAMPLE_LABELS = ROOT / "data" / "samples" / "labels.jsonl"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Boosting's OpenMP threads crawl on a busy 2-core machine; results do not depend on them.
    with threadpool_limits(limits=1):
        yield


def mixed_data(rng: np.random.Generator, n: int, n_features: int = 12) -> np.ndarray:
    """Binary flags, counts, log-scale and heavy-tailed continuous columns, like the features."""
    cols = []
    for j in range(n_features):
        kind = j % 4
        if kind == 0:
            cols.append((rng.random(n) < 0.1 + 0.05 * j).astype(float))
        elif kind == 1:
            cols.append(np.log1p(rng.poisson(3.0, n)).astype(float))
        elif kind == 2:
            cols.append(rng.normal(0.0, 1.0 + j, n))
        else:
            cols.append(rng.standard_cauchy(n))
    return np.column_stack(cols)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    train = mixed_data(rng, 3000)
    test = np.vstack([mixed_data(rng, 3000), mixed_data(rng, 200) * 50.0])
    return train, test


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"max_samples": 64},
        {"max_samples": 1.0},
        {"max_features": 0.5},
        {"max_features": 3},
        {"max_features": 0.7, "bootstrap": True},
    ],
    ids=["default", "64-samples", "all-samples", "half-features", "3-features", "bootstrap"],
)
def test_flat_isolation_forest_equals_sklearn(
    data: tuple[np.ndarray, np.ndarray], options: dict[str, object]
) -> None:
    train, test = data
    forest = IsolationForest(n_estimators=60, random_state=3, **options).fit(train)  # type: ignore[arg-type]
    flat = FlatIsolationForest(forest)
    expected = forest.score_samples(test)
    np.testing.assert_allclose(flat.score_samples(test), expected, rtol=0, atol=1e-9)
    singles = np.asarray([flat.score_one(row) for row in test[:1500]])
    np.testing.assert_allclose(singles, expected[:1500], rtol=0, atol=1e-9)


def test_flat_isolation_forest_on_values_at_float32_thresholds(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    """scikit-learn compares float32 inputs; values straddling a threshold must go the same way."""
    train, _ = data
    forest = IsolationForest(n_estimators=30, random_state=0).fit(train)
    thresholds = np.concatenate([est.tree_.threshold for est in forest.estimators_])
    thresholds = thresholds[thresholds != -2.0][:500]
    rows = np.repeat(train[:1], thresholds.size * 3, axis=0)
    nudged = np.concatenate(
        [thresholds, np.nextafter(thresholds, np.inf), np.nextafter(thresholds, -np.inf)]
    )
    for j in range(train.shape[1]):
        probe = rows.copy()
        probe[:, j] = nudged
        np.testing.assert_allclose(
            FlatIsolationForest(forest).score_samples(probe),
            forest.score_samples(probe),
            rtol=0,
            atol=1e-9,
        )


def _hgb_data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    X = mixed_data(rng, n, 10)
    y = ((X[:, 0] > 0.5) & (X[:, 2] > 0)) | (X[:, 5] > 2.5) | (rng.random(n) < 0.05)
    X[rng.random(X.shape) < 0.08] = np.nan
    return X, y.astype(int)


@pytest.mark.parametrize(
    "options",
    [
        {"max_iter": 40, "max_leaf_nodes": 15},
        {"max_iter": 30, "max_depth": 3, "class_weight": "balanced"},
        {"max_iter": 50, "max_leaf_nodes": 31, "learning_rate": 0.3},
    ],
)
def test_flat_gradient_boosting_equals_sklearn_with_missing_values(
    options: dict[str, object],
) -> None:
    rng = np.random.default_rng(7)
    X, y = _hgb_data(rng, 2500)
    model = HistGradientBoostingClassifier(random_state=0, **options).fit(X, y)  # type: ignore[arg-type]
    test, _ = _hgb_data(rng, 2000)
    test[:50] = np.nan  # whole rows missing
    flat = FlatGradientBoosting(model)
    expected = model.decision_function(test)
    np.testing.assert_allclose(flat.decision_function(test), expected, rtol=0, atol=1e-9)
    singles = np.asarray([flat.decision_one(row) for row in test[:1500]])
    np.testing.assert_allclose(singles, expected[:1500], rtol=0, atol=1e-9)


def test_missing_values_unseen_in_training_follow_sklearn() -> None:
    rng = np.random.default_rng(11)
    X = mixed_data(rng, 3000, 6)
    y = (X[:, 2] > 0.3).astype(int)
    model = HistGradientBoostingClassifier(max_iter=40, random_state=0).fit(X, y)
    test = mixed_data(rng, 1000, 6)
    test[rng.random(test.shape) < 0.3] = np.nan
    np.testing.assert_allclose(
        FlatGradientBoosting(model).decision_function(test),
        model.decision_function(test),
        rtol=0,
        atol=1e-9,
    )


def test_categorical_splits_are_refused() -> None:
    rng = np.random.default_rng(5)
    X = np.column_stack([rng.integers(0, 6, 2000), rng.normal(size=2000)]).astype(float)
    y = np.isin(X[:, 0], [1, 4]).astype(int)
    model = HistGradientBoostingClassifier(
        max_iter=20, categorical_features=[0], random_state=0
    ).fit(X, y)
    with pytest.raises(ValueError, match="categorical"):
        FlatGradientBoosting(model)


def test_multiclass_models_are_refused() -> None:
    rng = np.random.default_rng(6)
    X = rng.normal(size=(1500, 4))
    y = np.digitize(X[:, 0], [-0.5, 0.5])  # three classes
    model = HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="binary"):
        FlatGradientBoosting(model)


# -- the default model, on the sample replay --------------------------------------------


def test_default_model_single_row_path_equals_batch_on_the_sample() -> None:
    artifact = load_artifact(default_model_path())
    table = replay([SAMPLE_EVENTS], load_labels([SAMPLE_LABELS]))
    assert table.X.shape[0] > 4000
    model = artifact.model
    batch = model.score(table.X)
    singles = np.asarray([model.score_one(row) for row in table.X])
    np.testing.assert_allclose(singles, batch, rtol=0, atol=1e-9)
    assert np.all((batch >= 0.0) & (batch <= 1.0))
