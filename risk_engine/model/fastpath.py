"""Single-event scoring without scikit-learn's per-call overhead.

``IsolationForest.score_samples`` on one row costs milliseconds (validation,
joblib dispatch, one ``apply`` per tree). Here the fitted trees are flattened
once, at load time, into padded numpy arrays, and all trees are walked together,
one vectorised step per level, giving the same scores to rounding error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
from sklearn.ensemble._iforest import _average_path_length

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]


class FlatIsolationForest:
    """An IsolationForest's trees as flat arrays; ``score_samples`` for one or many rows."""

    def __init__(self, forest: IsolationForest) -> None:
        trees = [est.tree_ for est in forest.estimators_]
        width = max(t.node_count for t in trees)
        n_trees = len(trees)
        left = np.zeros((n_trees, width), dtype=np.intp)
        right = np.zeros((n_trees, width), dtype=np.intp)
        feature = np.zeros((n_trees, width), dtype=np.intp)
        threshold = np.full((n_trees, width), np.inf)
        leaf_depth = np.zeros((n_trees, width))
        max_depth = 0
        for t, (tree, features) in enumerate(zip(trees, forest.estimators_features_, strict=True)):
            n = tree.node_count
            base = t * width
            own = np.arange(n) + base
            is_leaf = tree.children_left[:n] == -1
            # A leaf points at itself, so extra steps leave a finished walk in place.
            left[t, :n] = np.where(is_leaf, own, tree.children_left[:n] + base)
            right[t, :n] = np.where(is_leaf, own, tree.children_right[:n] + base)
            mapped = np.asarray(features)[np.where(is_leaf, 0, tree.feature[:n])]
            feature[t, :n] = np.where(is_leaf, 0, mapped)
            threshold[t, :n] = np.where(is_leaf, np.inf, tree.threshold[:n])
            leaf_depth[t, :n] = (
                forest._decision_path_lengths[t][:n]
                + forest._average_path_length_per_tree[t][:n]
                - 1.0
            )
            max_depth = max(max_depth, int(tree.max_depth))
        self._left = left.ravel()
        self._right = right.ravel()
        self._feature = feature.ravel()
        self._threshold = threshold.ravel()
        self._leaf_depth = leaf_depth.ravel()
        self._roots = np.arange(n_trees, dtype=np.intp) * width
        self._steps = max_depth
        self._denominator = float(n_trees * _average_path_length([forest._max_samples])[0])
        self.n_features = int(forest.n_features_in_)

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
        nodes = self._roots
        feature, threshold, left, right = self._feature, self._threshold, self._left, self._right
        for _ in range(self._steps):
            nodes = np.where(x[feature[nodes]] <= threshold[nodes], left[nodes], right[nodes])
        depth = float(self._leaf_depth[nodes].sum())
        return -float(2.0 ** (-depth / self._denominator))


class FlatGradientBoosting:
    """A binary HistGradientBoostingClassifier's trees as flat arrays (numeric features)."""

    def __init__(self, model: HistGradientBoostingClassifier) -> None:
        predictors: list[Any] = [stage[0] for stage in model._predictors]
        width = max(p.nodes.shape[0] for p in predictors)
        n_trees = len(predictors)
        left = np.zeros((n_trees, width), dtype=np.intp)
        right = np.zeros((n_trees, width), dtype=np.intp)
        feature = np.zeros((n_trees, width), dtype=np.intp)
        threshold = np.full((n_trees, width), np.inf)
        missing_left = np.zeros((n_trees, width), dtype=bool)
        value = np.zeros((n_trees, width))
        max_depth = 0
        for t, predictor in enumerate(predictors):
            nodes = predictor.nodes
            n = nodes.shape[0]
            base = t * width
            own = np.arange(n) + base
            is_leaf = nodes["is_leaf"].astype(bool)
            if np.any(nodes["is_categorical"][~is_leaf]):
                raise ValueError("categorical splits are not supported by the fast path")
            left[t, :n] = np.where(is_leaf, own, nodes["left"] + base)
            right[t, :n] = np.where(is_leaf, own, nodes["right"] + base)
            feature[t, :n] = np.where(is_leaf, 0, nodes["feature_idx"])
            threshold[t, :n] = np.where(is_leaf, np.inf, nodes["num_threshold"])
            missing_left[t, :n] = np.where(is_leaf, True, nodes["missing_go_to_left"])
            value[t, :n] = np.where(is_leaf, nodes["value"], 0.0)
            max_depth = max(max_depth, int(nodes["depth"].max()))
        self._left = left.ravel()
        self._right = right.ravel()
        self._feature = feature.ravel()
        self._threshold = threshold.ravel()
        self._missing_left = missing_left.ravel()
        self._value = value.ravel()
        self._roots = np.arange(n_trees, dtype=np.intp) * width
        self._steps = max_depth
        self._baseline = float(np.ravel(model._baseline_prediction)[0])

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
        nodes = self._roots
        feature, threshold, left, right = self._feature, self._threshold, self._left, self._right
        for _ in range(self._steps):
            v = row[feature[nodes]]
            go_left = np.where(np.isnan(v), self._missing_left[nodes], v <= threshold[nodes])
            nodes = np.where(go_left, left[nodes], right[nodes])
        return float(self._value[nodes].sum()) + self._baseline
