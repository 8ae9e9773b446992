"""Single-event scoring without scikit-learn's per-call overhead.

``IsolationForest.score_samples`` on one row costs milliseconds (validation,
joblib dispatch, one ``apply`` per tree). Here the fitted trees are flattened
once, at load time, into padded numpy arrays, and all trees are walked together,
one vectorised step per level, giving the same scores to rounding error.

On one row the cost is numpy's per-call overhead, not arithmetic, so the
single-row walks use a layout that needs the fewest calls per level: node ``k``
sits at index ``2k``, ``child[2k + 1]`` is its left child and ``child[2k]`` its
right one (both stored doubled), and one level is
``d = child[d + (x[feature[d]] <= threshold[d])]``. ``FlatEnsemble`` walks the
forest and the boosted trees in that one loop.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
from sklearn.ensemble._iforest import _average_path_length

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]


def _doubled(
    left: IntArray, right: IntArray, feature: IntArray, threshold: FloatArray
) -> tuple[IntArray, IntArray, FloatArray]:
    """(child, feature, threshold) in the doubled layout of the module docstring.

    A comparison with NaN is False, so NaN goes right, as ``np.where(x <= t, left,
    right)`` sends it; leaves point at themselves with an infinite threshold, so
    the extra levels of a shallow tree leave its walk in place.
    """
    child = np.empty(2 * left.size, dtype=np.intp)
    child[0::2] = 2 * right
    child[1::2] = 2 * left
    feature2 = np.zeros(2 * left.size, dtype=np.intp)
    feature2[0::2] = feature
    threshold2 = np.full(2 * left.size, np.inf)
    threshold2[0::2] = threshold
    return child, feature2, threshold2


def _roots(sizes: list[int]) -> IntArray:
    """Where each tree starts when the trees are laid end to end (no padding: less cache)."""
    return np.concatenate(([0], np.cumsum(sizes[:-1]))).astype(np.intp)


def _spread(values: FloatArray) -> FloatArray:
    """Per-node values at the even indices of the doubled layout."""
    out = np.zeros(2 * values.size)
    out[0::2] = values
    return out


class FlatIsolationForest:
    """An IsolationForest's trees as flat arrays; ``score_samples`` for one or many rows."""

    def __init__(self, forest: IsolationForest) -> None:
        trees = [est.tree_ for est in forest.estimators_]
        roots = _roots([t.node_count for t in trees])
        total = int(roots[-1]) + trees[-1].node_count
        left = np.zeros(total, dtype=np.intp)
        right = np.zeros(total, dtype=np.intp)
        feature = np.zeros(total, dtype=np.intp)
        threshold = np.full(total, np.inf)
        leaf_depth = np.zeros(total)
        max_depth = 0
        for t, (tree, features) in enumerate(zip(trees, forest.estimators_features_, strict=True)):
            n = tree.node_count
            base = int(roots[t])
            nodes = slice(base, base + n)
            own = np.arange(n) + base
            is_leaf = tree.children_left[:n] == -1
            # A leaf points at itself, so extra steps leave a finished walk in place.
            left[nodes] = np.where(is_leaf, own, tree.children_left[:n] + base)
            right[nodes] = np.where(is_leaf, own, tree.children_right[:n] + base)
            mapped = np.asarray(features)[np.where(is_leaf, 0, tree.feature[:n])]
            feature[nodes] = np.where(is_leaf, 0, mapped)
            threshold[nodes] = np.where(is_leaf, np.inf, tree.threshold[:n])
            leaf_depth[nodes] = (
                forest._decision_path_lengths[t][:n]
                + forest._average_path_length_per_tree[t][:n]
                - 1.0
            )
            max_depth = max(max_depth, int(tree.max_depth))
        self._left = left
        self._right = right
        self._feature = feature
        self._threshold = threshold
        self._leaf_depth = leaf_depth
        self._roots = roots
        self._steps = max_depth
        self._denominator = float(len(trees) * _average_path_length([forest._max_samples])[0])
        self.n_features = int(forest.n_features_in_)
        self._child2, self._feature2, self._threshold2 = _doubled(
            self._left, self._right, self._feature, self._threshold
        )
        self._leaf_depth2 = _spread(self._leaf_depth)
        self._roots2 = 2 * self._roots

    def score_samples(self, X: FloatArray) -> FloatArray:
        """Same as ``IsolationForest.score_samples`` (lower = more abnormal), rows of X."""
        # scikit-learn compares float32 inputs against the thresholds: do the same.
        x = np.asarray(X, dtype=np.float32).astype(np.float64)
        n = x.shape[0]
        nodes = np.broadcast_to(self._roots, (n, self._roots.size)).copy()
        rows = np.arange(n)[:, None]
        for _ in range(self._steps):
            go_left = x[rows, self._feature[nodes]] <= self._threshold[nodes]
            nodes = np.where(go_left, self._left[nodes], self._right[nodes])
        depths = self._leaf_depth[nodes].sum(axis=1)
        scores: FloatArray = -np.power(2.0, -depths / self._denominator)
        return scores

    def score_one(self, row: FloatArray) -> float:
        """``score_samples`` of a single row, with no 2-D bookkeeping."""
        x = row.astype(np.float32).astype(np.float64)
        d = self._roots2
        child, feature, threshold = self._child2, self._feature2, self._threshold2
        for _ in range(self._steps):
            d = child[d + (x[feature[d]] <= threshold[d])]
        return self.score_from_depth(float(self._leaf_depth2[d].sum()))

    def score_from_depth(self, depth: float) -> float:
        """The score of a row whose leaf depths over all trees sum to ``depth``."""
        return -float(2.0 ** (-depth / self._denominator))


class FlatGradientBoosting:
    """A binary HistGradientBoostingClassifier's trees as flat arrays (numeric features)."""

    def __init__(self, model: HistGradientBoostingClassifier) -> None:
        if model.n_trees_per_iteration_ != 1:
            raise ValueError(
                f"only binary classifiers are supported by the fast path, "
                f"got {len(model.classes_)} classes"
            )
        predictors: list[Any] = [stage[0] for stage in model._predictors]
        roots = _roots([p.nodes.shape[0] for p in predictors])
        total = int(roots[-1]) + predictors[-1].nodes.shape[0]
        left = np.zeros(total, dtype=np.intp)
        right = np.zeros(total, dtype=np.intp)
        feature = np.zeros(total, dtype=np.intp)
        threshold = np.full(total, np.inf)
        missing_left = np.zeros(total, dtype=bool)
        value = np.zeros(total)
        max_depth = 0
        for t, predictor in enumerate(predictors):
            records = predictor.nodes
            n = records.shape[0]
            base = int(roots[t])
            nodes = slice(base, base + n)
            own = np.arange(n) + base
            is_leaf = records["is_leaf"].astype(bool)
            if np.any(records["is_categorical"][~is_leaf]):
                raise ValueError("categorical splits are not supported by the fast path")
            left[nodes] = np.where(is_leaf, own, records["left"] + base)
            right[nodes] = np.where(is_leaf, own, records["right"] + base)
            feature[nodes] = np.where(is_leaf, 0, records["feature_idx"])
            threshold[nodes] = np.where(is_leaf, np.inf, records["num_threshold"])
            missing_left[nodes] = np.where(is_leaf, True, records["missing_go_to_left"])
            value[nodes] = np.where(is_leaf, records["value"], 0.0)
            max_depth = max(max_depth, int(records["depth"].max()))
        self._left = left
        self._right = right
        self._feature = feature
        self._threshold = threshold
        self._missing_left = missing_left
        self._value = value
        self._roots = roots
        self._steps = max_depth
        self._baseline = float(np.ravel(model._baseline_prediction)[0])
        self.n_features = int(model.n_features_in_)
        self._child2, self._feature2, self._threshold2 = _doubled(
            self._left, self._right, self._feature, self._threshold
        )
        self._value2 = _spread(self._value)
        self._roots2 = 2 * self._roots

    def decision_function(self, X: FloatArray) -> FloatArray:
        """Raw log-odds, as ``HistGradientBoostingClassifier.decision_function``."""
        x = np.asarray(X, dtype=np.float64)
        n = x.shape[0]
        nodes = np.broadcast_to(self._roots, (n, self._roots.size)).copy()
        rows = np.arange(n)[:, None]
        for _ in range(self._steps):
            v = x[rows, self._feature[nodes]]
            go_left = np.where(np.isnan(v), self._missing_left[nodes], v <= self._threshold[nodes])
            nodes = np.where(go_left, self._left[nodes], self._right[nodes])
        raw: FloatArray = self._value[nodes].sum(axis=1) + self._baseline
        return raw

    def decision_one(self, row: FloatArray) -> float:
        """``decision_function`` of a single row."""
        if math.isnan(float(row.sum())):
            return self._decision_one_missing(row)
        d = self._roots2
        child, feature, threshold = self._child2, self._feature2, self._threshold2
        for _ in range(self._steps):
            d = child[d + (row[feature[d]] <= threshold[d])]
        return self.raw_from_leaves(float(self._value2[d].sum()))

    def _decision_one_missing(self, row: FloatArray) -> float:
        """The walk that sends a missing value where training sent it (per node)."""
        nodes = self._roots
        feature, threshold, left, right = self._feature, self._threshold, self._left, self._right
        for _ in range(self._steps):
            v = row[feature[nodes]]
            go_left = np.where(np.isnan(v), self._missing_left[nodes], v <= threshold[nodes])
            nodes = np.where(go_left, left[nodes], right[nodes])
        return self.raw_from_leaves(float(self._value[nodes].sum()))

    def raw_from_leaves(self, total: float) -> float:
        """The log-odds of a row whose leaf values over all trees sum to ``total``."""
        return total + self._baseline


class FlatEnsemble:
    """The forest and the boosted trees in one set of arrays, walked together for one row.

    Walking both in one loop halves the numpy calls of scoring them one after the
    other; each part's leaves are summed exactly as its own ``*_one`` method sums
    them, so the results are bit for bit the same. The forest reads the row
    rounded to float32 (as scikit-learn does) and the boosting reads it as is, so
    the walk reads a row twice as long: the float32 copy, then the original.
    """

    def __init__(self, forest: FlatIsolationForest, boosting: FlatGradientBoosting | None) -> None:
        self.forest = forest
        self.boosting = boosting
        if boosting is None:
            return
        if boosting.n_features != forest.n_features:
            raise ValueError(
                f"the forest reads {forest.n_features} features, the boosting {boosting.n_features}"
            )
        offset = forest._child2.size
        self._child2 = np.concatenate((forest._child2, boosting._child2 + offset))
        self._feature2 = np.concatenate((forest._feature2, boosting._feature2))
        # The boosting's splits read the second, unrounded half of the doubled row.
        self._feature2[offset::2] += forest.n_features
        self._threshold2 = np.concatenate((forest._threshold2, boosting._threshold2))
        # Forest lanes only reach forest nodes, boosting lanes only boosting nodes.
        self._leaf_depth2 = forest._leaf_depth2
        self._value2 = np.concatenate((np.zeros(offset), boosting._value2))
        self._roots2 = np.concatenate((forest._roots2, boosting._roots2 + offset))
        self._n_forest = forest._roots2.size
        # Levels both walk together; past them only the deeper part's lanes go on.
        self._common = min(forest._steps, boosting._steps)
        self._forest_tail = forest._steps - self._common
        self._boosting_tail = boosting._steps - self._common

    def raw_one(self, row: FloatArray) -> tuple[float, float | None]:
        """(forest ``score_samples``, boosting log-odds or None) of one row."""
        forest, boosting = self.forest, self.boosting
        if boosting is None:
            return forest.score_one(row), None
        if math.isnan(float(row.sum())):
            # Missing values follow per-node directions only the boosting's own walk knows.
            return forest.score_one(row), boosting.decision_one(row)
        x = np.concatenate((row.astype(np.float32).astype(np.float64), row))
        d = self._roots2
        child, feature, threshold = self._child2, self._feature2, self._threshold2
        for _ in range(self._common):
            d = child[d + (x[feature[d]] <= threshold[d])]
        forest_d, boosting_d = d[: self._n_forest], d[self._n_forest :]
        for _ in range(self._forest_tail):
            forest_d = child[forest_d + (x[feature[forest_d]] <= threshold[forest_d])]
        for _ in range(self._boosting_tail):
            boosting_d = child[boosting_d + (x[feature[boosting_d]] <= threshold[boosting_d])]
        depth = float(self._leaf_depth2[forest_d].sum())
        total = float(self._value2[boosting_d].sum())
        return forest.score_from_depth(depth), boosting.raw_from_leaves(total)
