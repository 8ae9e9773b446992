"""Flattened trees score exactly like scikit-learn; the model's single-row path like its batch."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
from threadpoolctl import threadpool_limits

from risk_engine.features.registry import FEATURE_INDEX, FEATURE_NAMES
from risk_engine.model import fastpath
from risk_engine.model.artifact import default_model_path, load_artifact
from risk_engine.model.detector import DetectorParams, RiskModel
from risk_engine.model.fastpath import FlatEnsemble, FlatGradientBoosting, FlatIsolationForest
from risk_engine.offline.labels import load_labels
from risk_engine.offline.logs import LogReport
from risk_engine.offline.replay import replay

ROOT = Path(__file__).parents[2]
SAMPLE_EVENTS = ROOT / "data" / "samples" / "events.jsonl"
SAMPLE_LABELS = ROOT / "data" / "samples" / "labels.jsonl"
_HISTORY = FEATURE_INDEX["history_log_events"]


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


def singles(one: Callable[[np.ndarray], float], X: np.ndarray) -> np.ndarray:
    return np.asarray([one(row) for row in X])


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"max_samples": 64},
        {"max_samples": 1.0},
        {"max_features": 0.5},
        {"max_features": 3},
        {"max_features": 0.7, "bootstrap": True},
        {"max_features": 1},
        {"max_samples": 5},
        {"max_samples": 1},
    ],
    ids=[
        "default",
        "64-samples",
        "all-samples",
        "half-features",
        "3-features",
        "bootstrap",
        "1-feature",
        "5-samples",
        "1-sample",  # every tree a lone leaf, scikit-learn's 0/0 case
    ],
)
def test_flat_isolation_forest_equals_sklearn(
    data: tuple[np.ndarray, np.ndarray], options: dict[str, object]
) -> None:
    train, test = data
    test = test.copy()
    test[::97, 5] = np.nan  # NaN follows each node's own direction (to the larger child)
    forest = IsolationForest(n_estimators=60, random_state=3, **options).fit(train)  # type: ignore[arg-type]
    flat = FlatIsolationForest(forest)
    expected = forest.score_samples(test)
    batch = flat.score_samples(test)
    np.testing.assert_allclose(batch, expected, rtol=0, atol=1e-9)
    # The batch kernel runs the single-row walk: the same bits either way.
    np.testing.assert_array_equal(singles(flat.score_one, test), batch)


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
    # The float32 thresholds the walk compares with, and the float32 values either side.
    t32 = thresholds.astype(np.float32)
    nudged32 = np.concatenate(
        [t32, np.nextafter(t32, np.float32(np.inf)), np.nextafter(t32, np.float32(-np.inf))]
    ).astype(np.float64)
    flat = FlatIsolationForest(forest)
    for j in range(train.shape[1]):
        for values in (nudged, nudged32):
            probe = rows.copy()
            probe[:, j] = values
            np.testing.assert_allclose(
                flat.score_samples(probe), forest.score_samples(probe), rtol=0, atol=1e-9
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
    batch = flat.decision_function(test)
    np.testing.assert_allclose(batch, expected, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(singles(flat.decision_one, test), batch)


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


# -- the ensemble and the model's single-row path -----------------------------------------


def _model_data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows as wide as the feature schema (RiskModel reads the history column), some NaN."""
    X = mixed_data(rng, n, len(FEATURE_NAMES))
    X[:, _HISTORY] = np.log1p(rng.poisson(rng.choice([0.2, 3.0, 40.0], n)))
    attack = ((X[:, 0] > 0.5) & (X[:, 2] > 0)) | (X[:, 5] > 2.5) | (rng.random(n) < 0.02)
    holes = rng.random(X.shape) < 0.02
    holes[:, _HISTORY] = False
    X[holes] = np.nan
    return X, attack


@pytest.fixture(scope="module")
def labelled() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(21)
    X, attack = _model_data(rng, 3000)
    test, _ = _model_data(rng, 3000)
    return X, attack, test


@pytest.mark.parametrize("supervised", [False, True], ids=["forest", "forest+boosting"])
def test_model_single_row_path_equals_its_batch_and_sklearn(
    labelled: tuple[np.ndarray, np.ndarray, np.ndarray], supervised: bool
) -> None:
    X, attack, test = labelled
    params = DetectorParams(n_estimators=60, supervised=supervised, supervised_max_iter=30)
    model = RiskModel(params).fit(X, attack)
    assert model.kind == ("iforest+hgb" if supervised else "iforest")
    np.testing.assert_array_equal(singles(model.score_one, test), model.score(test))
    assert model.detector_ is not None and model._fast_ensemble is not None
    pairs = [model._fast_ensemble.raw_one(row) for row in test]
    forest = np.asarray([score for score, _ in pairs])
    np.testing.assert_allclose(forest, model.detector_.score_samples(test), rtol=0, atol=1e-9)
    if supervised:
        assert model.supervised_ is not None
        raw = np.asarray([r for _, r in pairs], dtype=np.float64)
        expected = model.supervised_.decision_function(test)
        np.testing.assert_allclose(raw, expected, rtol=0, atol=1e-9)
    else:
        assert all(r is None for _, r in pairs)
    # What an artifact stores: the arrays alone score the same, to the bit.
    meta, arrays = model.to_arrays()
    loaded = RiskModel.from_arrays(meta, arrays, len(FEATURE_NAMES))
    assert loaded.kind == model.kind and loaded.detector_ is None
    probes = model.probe_rows(3000)
    for rows in (test, probes):
        np.testing.assert_array_equal(loaded.score(rows), model.score(rows))
        np.testing.assert_array_equal(
            singles(loaded.score_one, rows[:500]), model.score(rows[:500])
        )
    model.check_against_sklearn(np.vstack([test, probes]))


def test_rows_of_the_wrong_length_are_refused_before_any_read(
    labelled: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    X, attack, _ = labelled
    model = RiskModel(DetectorParams(n_estimators=20, supervised_max_iter=10)).fit(X, attack)
    assert model._fast_forest is not None and model._fast_boosting is not None
    assert model._fast_ensemble is not None
    ones = [
        model.score_one,
        model._fast_ensemble.raw_one,
        model._fast_forest.score_one,
        model._fast_boosting.decision_one,
    ]
    n = X.shape[1]
    for bad in (np.zeros(n - 1), np.zeros(n + 1), np.zeros(0), np.zeros((1, n)), [0.0] * (n - 1)):
        for one in ones:
            with pytest.raises(ValueError, match="features"):
                one(bad)  # type: ignore[arg-type]
    for batch in (model._fast_forest.score_samples, model._fast_boosting.decision_function):
        for bad_matrix in (np.zeros((3, n - 1)), np.zeros((3, n + 1)), np.zeros(n)):
            with pytest.raises(ValueError, match="features"):
                batch(bad_matrix)


def test_rows_of_any_layout_score_alike(
    labelled: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """Strided, read-only, float32 or list rows are copied into the layout the kernels take."""
    X, attack, test = labelled
    model = RiskModel(DetectorParams(n_estimators=20, supervised_max_iter=10)).fit(X, attack)
    row = test[3].copy()
    expected = model.score_one(row)
    strided = np.repeat(row, 2)[::2]
    readonly = row.copy()
    readonly.flags.writeable = False
    fortran = np.asfortranarray(test[:5])
    variants = [strided, readonly, row.tolist(), fortran[3], row.astype(np.float32)]
    as_float32 = model.score_one(row.astype(np.float32).astype(np.float64))
    for variant in variants[:-1]:
        assert model.score_one(variant) == expected  # type: ignore[arg-type]
    assert model.score_one(variants[-1]) == as_float32
    np.testing.assert_array_equal(model.score(fortran), model.score(test[:5]))


def test_threads_score_concurrently_without_sharing_state(
    labelled: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    X, attack, test = labelled
    model = RiskModel(DetectorParams(n_estimators=40, supervised_max_iter=20)).fit(X, attack)
    expected = model.score(test)

    def score_all(offset: int) -> np.ndarray:
        order = np.roll(np.arange(test.shape[0]), offset * 97)
        out = np.empty(test.shape[0])
        for i in order:
            out[i] = model.score_one(test[i])
        return out

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(score_all, range(8)))
    for result in results:
        np.testing.assert_array_equal(result, expected)


def test_flattened_arrays_a_kernel_could_overrun_are_refused(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    train, _ = data
    flat = FlatIsolationForest(IsolationForest(n_estimators=10, random_state=0).fit(train))
    words, reals, n_features = flat._words, flat._reals, flat.n_features

    def check(words: np.ndarray, reals: np.ndarray = reals) -> None:
        fastpath._check(words, reals, n_features, extra_words=1, extra_reals=0)

    check(words)  # as built: accepted
    n_trees, steps, n_nodes = (int(v) for v in words[:3])
    nodes_at = 3 + steps + n_trees

    def changed(index: int, value: int) -> np.ndarray:
        bad = words.copy()
        bad[index] = value
        return bad

    node = nodes_at + 4 * (n_nodes // 2)
    cases = [
        (changed(node + 1, n_nodes), "child"),  # left
        (changed(node + 2, n_nodes + 5), "child"),  # right
        (changed(node + 3, 2**32 - 1), "child"),  # where NaN goes
        (changed(node, n_features), "feature"),
        (changed(0, n_nodes + 1), "header"),  # more trees than nodes
        (changed(2, n_nodes + 1), "header"),  # more nodes than words
        (changed(1, steps + 1), "header"),
        (changed(3, n_trees + 1), "walk"),
        (changed(3 + steps, 3), "permutation"),
        (words[:-1], "header"),
        (words.astype(np.int64), "uint32"),
        (np.zeros(2, dtype=np.uint32), "header"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            check(bad)
    with pytest.raises(ValueError, match="reals"):
        check(words, reals[:-1])


def test_an_ensemble_of_models_reading_different_rows_is_refused(
    labelled: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    X, attack, _ = labelled
    forest = FlatIsolationForest(IsolationForest(n_estimators=5, random_state=0).fit(X[:, :4]))
    boosting = FlatGradientBoosting(
        HistGradientBoostingClassifier(max_iter=5, random_state=0).fit(X, attack)
    )
    with pytest.raises(ValueError, match="features"):
        FlatEnsemble(forest, boosting)


# -- the default model, on the sample replay --------------------------------------------


@pytest.fixture(scope="module")
def sample_rows() -> np.ndarray:
    table = replay([SAMPLE_EVENTS], load_labels([SAMPLE_LABELS], LogReport()))
    assert table.X.shape[0] > 4000
    return table.X


def test_default_model_single_row_path_equals_batch_on_the_sample(
    sample_rows: np.ndarray,
) -> None:
    model = load_artifact(default_model_path()).model
    batch = model.score(sample_rows)
    np.testing.assert_array_equal(singles(model.score_one, sample_rows), batch)
    assert np.all((batch >= 0.0) & (batch <= 1.0))


def test_default_model_parts_score_one_row_as_their_batches_on_the_sample(
    sample_rows: np.ndarray,
) -> None:
    """The shipped model holds no scikit-learn detectors: they were checked when it was saved."""
    model = load_artifact(default_model_path()).model
    assert model.kind == "iforest+hgb"
    assert model.detector_ is None and model.supervised_ is None
    assert model._fast_forest is not None and model._fast_boosting is not None
    forest, boosting = model._fast_forest, model._fast_boosting
    np.testing.assert_array_equal(
        singles(forest.score_one, sample_rows), forest.score_samples(sample_rows)
    )
    np.testing.assert_array_equal(
        singles(boosting.decision_one, sample_rows), boosting.decision_function(sample_rows)
    )
