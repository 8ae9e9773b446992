"""Single-event scoring without scikit-learn's per-call overhead: compiled tree walks.

``IsolationForest.score_samples`` on one row costs milliseconds (validation,
joblib dispatch, one ``apply`` per tree). Here the fitted trees are flattened
once, at load time, into a few numpy arrays, and walked by small numba kernels;
the batch kernels loop over rows calling the single-row walk, so one row scores
the same, to the bit, alone or in a batch, and as scikit-learn does to the last
bit or two (the leaves are summed in its order, from the same per-leaf values).

The layout: each model is two arrays, sliced back into tables inside the
kernels, because a call into numba costs per argument it unboxes: 0.56 µs for
the row and both models' four arrays, 0.89 µs for the 11 arrays and numbers of
one array per table.

- ``words`` (uint32): the number of trees, of levels, of nodes; how many trees
  still walk at each level (the first ones: they are sorted by depth); each
  tree's slot in the walk, in the model's order (to sum the leaves in that
  order); then 4 words per node: feature, left child, right child, and the child
  a missing value (NaN) goes to, as scikit-learn's trees record it per node; for
  the forest, then, the nodes' float32 thresholds (their bits). The roots come
  first, one per tree, deepest tree first; a leaf points at itself with an
  infinite threshold, so extra steps leave its walk in place.
- ``reals`` (float64): the model's constant (the forest's denominator, the
  boosting's baseline), each node's leaf value, and for the boosting its float64
  thresholds.

The trees are walked in lockstep: one level of every tree, then the next. A walk
down one tree is a chain of dependent loads; the trees of a level are
independent, so the CPU overlaps them (2.6 µs for the default forest against
5.5 µs tree by tree). Node indices are unsigned, which spares each load numba's
negative-index check (4.3 µs instead of 2.7 in a prototype with signed ones).

Both models share the walk, ``x <= threshold`` else right, NaN to its own child.
The forest reads the row rounded to float32, as scikit-learn does; since that
value is a float32, ``x <= t`` holds exactly when ``x <= t32``, t32 the largest
float32 not above t, so its thresholds are float32 too (half the memory the
walk reads). The boosting reads the float64 row with float64 thresholds.

The two arrays are the whole model: a model artifact stores them (data, not code)
and ``from_arrays`` rebuilds the scorer from them, checked, without scikit-learn.

Compiling: the kernels compile on their first call, never at import;
``RiskModel.prepare()`` and ``fit()`` warm them up (``warm_up``) so the first
request does not pay for it. See ``_enable_disk_cache`` for numba's cache. They
run without the GIL (``nogil``): other threads go on while one scores, and each
call allocates its own scratch arrays, so threads share nothing writable.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

import numba
import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:  # scikit-learn is needed to flatten a fitted model, never to score one
    from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]
WordArray = NDArray[np.uint32]
_FLOAT64 = np.dtype(np.float64)
_HEADER = 3  # words[0:3]: trees, levels, nodes
_K = TypeVar("_K", bound=Callable[..., Any])
_KERNELS: list[Any] = []


def _kernel(fn: _K) -> _K:
    """``fn`` compiled by numba on its first call, running without the GIL.

    The dispatcher keeps ``fn``'s signature for the type checker; numba ignores it.
    No bounds checks in compiled code: the arrays are checked at construction
    (``_check``) and every row's length before the call (``_as_row``).
    """
    dispatcher = numba.njit(nogil=True)(fn)
    _KERNELS.append(dispatcher)
    return cast(_K, dispatcher)


@functools.cache
def _enable_disk_cache() -> bool:
    """Let numba keep the compiled kernels on disk; False if no location is writable.

    Measured on the 2-core dev machine: compiling the kernels costs 3-4 s per
    process, loading them from the cache 0.3 s (numba's own start-up, mostly), so
    every worker start and every test run would otherwise pay seconds. numba
    writes under $NUMBA_CACHE_DIR if set, else next to this file
    (``__pycache__/fastpath.*.nbi|nbc``), else in the user's cache directory
    (~/.cache/numba); entries are keyed by this file's content (any edit
    invalidates them all), numba's version and the CPU, so a stale one is never
    used. With no writable location at all, numba raises at ``enable_caching``
    (``njit(cache=True)`` would raise at import): the kernels then compile in
    memory, with no warning. Enabled at the first warm-up, not at import, so
    importing never touches the file system.
    """
    try:
        for dispatcher in _KERNELS:
            # Under NUMBA_DISABLE_JIT=1 the "dispatcher" is the plain function.
            if hasattr(dispatcher, "enable_caching"):
                dispatcher.enable_caching()
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return False
    return True


# -- kernels ------------------------------------------------------------------------------


@_kernel
def _tables(words: WordArray) -> tuple[WordArray, WordArray]:
    """(the nodes, 4 words a row; the words after them) of a model's ``words``."""
    n_trees, steps, n_nodes = np.intp(words[0]), np.intp(words[1]), np.intp(words[2])
    start = _HEADER + steps + n_trees
    end = start + 4 * n_nodes
    return words[start:end].reshape((n_nodes, 4)), words[end:]


@_kernel
def _has_nan(x: FloatArray) -> bool:
    """Whether ``x`` holds a NaN (then the walk must look for missing values at each node)."""
    j = 0
    while j < x.size and x[j] == x[j]:
        j += 1
    return j < x.size


@_kernel
def _walk(
    x: NDArray[Any], words: WordArray, nodes: WordArray, thresholds: NDArray[Any], missing: bool
) -> WordArray:
    """The leaf each tree sends ``x`` to, in walk order (``missing``: x holds a NaN)."""
    n_trees, steps = np.intp(words[0]), np.intp(words[1])
    at = np.empty(n_trees, dtype=np.uint32)
    for t in range(n_trees):
        at[t] = t
    for level in range(steps):
        for t in range(np.intp(words[_HEADER + level])):
            node = at[t]
            value = x[nodes[node, 0]]
            child = nodes[node, 1] if value <= thresholds[node] else nodes[node, 2]
            if missing and value != value:  # (loop-invariant test: compiled out when False)
                child = nodes[node, 3]
            at[t] = child
    return at


@_kernel
def _sum_leaves(at: WordArray, words: WordArray, values: FloatArray, start: float) -> float:
    """``start`` plus each tree's leaf value, added in the model's order of the trees."""
    n_trees, steps = np.intp(words[0]), np.intp(words[1])
    slots = _HEADER + steps
    total = start
    for t in range(n_trees):
        total += values[at[words[slots + t]]]
    return total


@_kernel
def _forest_score(x: FloatArray, words: WordArray, reals: FloatArray) -> float:
    """``IsolationForest.score_samples`` of one row."""
    nodes, rest = _tables(words)
    n_nodes = nodes.shape[0]
    rounded = np.empty(x.size, dtype=np.float32)
    for j in range(x.size):
        rounded[j] = np.float32(x[j])
    at = _walk(rounded, words, nodes, rest.view(np.float32), _has_nan(x))
    depth = _sum_leaves(at, words, reals[1 : 1 + n_nodes], 0.0)
    denominator = reals[0]
    # scikit-learn's convention when the denominator is 0 (a forest of 1-sample trees).
    quotient = depth / denominator if denominator != 0.0 else 1.0
    return -math.pow(2.0, -quotient)


@_kernel
def _forest_scores(X: FloatArray, words: WordArray, reals: FloatArray) -> FloatArray:
    out = np.empty(X.shape[0])
    for i in range(X.shape[0]):
        out[i] = _forest_score(X[i], words, reals)
    return out


@_kernel
def _boosting_raw(x: FloatArray, words: WordArray, reals: FloatArray) -> float:
    """Log-odds of one row: the baseline, then each tree's leaf value, as scikit-learn adds them."""
    nodes, _ = _tables(words)
    n_nodes = nodes.shape[0]
    at = _walk(x, words, nodes, reals[1 + n_nodes : 1 + 2 * n_nodes], _has_nan(x))
    return _sum_leaves(at, words, reals[1 : 1 + n_nodes], reals[0])


@_kernel
def _boosting_raws(X: FloatArray, words: WordArray, reals: FloatArray) -> FloatArray:
    out = np.empty(X.shape[0])
    for i in range(X.shape[0]):
        out[i] = _boosting_raw(X[i], words, reals)
    return out


@_kernel
def _ensemble_raw(
    x: FloatArray,
    forest_words: WordArray,
    forest_reals: FloatArray,
    boosting_words: WordArray,
    boosting_reals: FloatArray,
) -> tuple[float, float]:
    """Both detectors' raw scores of one row, in one call into numba rather than two."""
    score = _forest_score(x, forest_words, forest_reals)
    return score, _boosting_raw(x, boosting_words, boosting_reals)


# -- flattening and checks ------------------------------------------------------------


def _flatten(
    left: IndexArray,
    right: IndexArray,
    missing: IndexArray,
    feature: IndexArray,
    sizes: list[int],
    depths: list[int],
) -> tuple[WordArray, IndexArray]:
    """(``words`` up to the nodes' own, old index of each new node) of trees laid end to end.

    ``left``/``right``/``missing`` are global (tree offsets added), leaves pointing at
    themselves. The roots move to the front, deepest tree first (stable: trees of equal
    depth keep the model's order); the other nodes keep their order after them.
    """
    n_trees, total = len(sizes), int(sum(sizes))
    if total >= 2**32:
        raise ValueError(f"cannot flatten the model: {total} nodes do not fit 32-bit indices")
    roots = np.concatenate(([0], np.cumsum(sizes[:-1]))).astype(np.intp)
    depth = np.asarray(depths, dtype=np.intp)
    order = np.argsort(-depth, kind="stable")
    new = np.empty(total, dtype=np.intp)
    new[roots[order]] = np.arange(n_trees)
    is_root = np.zeros(total, dtype=bool)
    is_root[roots] = True
    new[~is_root] = n_trees + np.arange(total - n_trees)
    old = np.empty(total, dtype=np.intp)
    old[new] = np.arange(total)
    nodes = np.column_stack(
        [feature[old], new[left[old]], new[right[old]], new[missing[old]]]
    ).astype(np.uint32)
    steps = int(depth.max(initial=0))
    walking = [int((depth > level).sum()) for level in range(steps)]
    slot = np.empty(n_trees, dtype=np.intp)
    slot[order] = np.arange(n_trees)
    header = np.concatenate(([n_trees, steps, total], walking, slot)).astype(np.uint32)
    return np.concatenate((header, nodes.ravel())), old


def _check(
    words: WordArray, reals: FloatArray, n_features: int, *, extra_words: int, extra_reals: int
) -> None:
    """Refuse arrays a kernel could read out of bounds with (compiled code checks nothing).

    ``extra_words``/``extra_reals``: per-node entries past the nodes / the leaf values.
    """
    if words.dtype != np.uint32 or words.ndim != 1 or not words.flags.c_contiguous:
        raise ValueError("cannot flatten the model: words must be a contiguous uint32 vector")
    if reals.dtype != np.float64 or reals.ndim != 1 or not reals.flags.c_contiguous:
        raise ValueError("cannot flatten the model: reals must be a contiguous float64 vector")
    n_trees, steps, n_nodes = (int(v) for v in words[:_HEADER]) if words.size >= 3 else (0, 0, 0)
    start = _HEADER + steps + n_trees
    problems = []
    if not 0 < n_trees <= n_nodes or words.size != start + (4 + extra_words) * n_nodes:
        problems.append(f"the header does not fit {words.size} words")
    elif reals.size != 1 + (1 + extra_reals) * n_nodes:
        problems.append(f"{reals.size} reals for {n_nodes} nodes")
    else:
        nodes = words[start : start + 4 * n_nodes].reshape(n_nodes, 4)
        if int(nodes[:, 1:].max()) >= n_nodes:
            problems.append("a child index is out of range")
        if int(nodes[:, 0].max()) >= n_features:
            problems.append(f"a feature index is out of range (the model reads {n_features})")
        if steps and int(words[_HEADER : _HEADER + steps].max()) > n_trees:
            problems.append("more trees walk at a level than there are")
        if not np.array_equal(np.sort(words[_HEADER + steps : start]), np.arange(n_trees)):
            problems.append("the tree slots are not a permutation")
    if problems:
        raise ValueError(f"cannot flatten the model: {'; '.join(problems)}")


def _float32_floor(threshold: FloatArray) -> NDArray[np.float32]:
    """The largest float32 not above each threshold: ``x <= t`` iff ``x <= t32`` for float32 x."""
    with np.errstate(over="ignore"):  # beyond float32's range: inf, stepped back below
        t32 = threshold.astype(np.float32)
    above = t32.astype(np.float64) > threshold
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


def _as_row(row: FloatArray, shape: tuple[int]) -> FloatArray:
    """``row`` as the kernels are compiled for it; raises ValueError on a wrong length.

    A float64 C-contiguous writable row of the right length is passed as is (the
    engine's case); anything else is copied into one, so numba never meets a new
    array type (a new type would mean a compilation in the middle of a request).
    """
    if type(row) is np.ndarray and row.dtype is _FLOAT64 and row.flags.carray:
        if row.shape == shape:
            return row
    else:
        row = np.array(row, dtype=np.float64)
    if row.shape != shape:
        raise ValueError(f"expected a row of {shape[0]} features, got shape {row.shape}")
    return row


def _as_matrix(X: FloatArray, n_features: int) -> FloatArray:
    x = np.require(X, dtype=np.float64, requirements=["C", "A", "W"])
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ValueError(f"expected rows of {n_features} features, got shape {x.shape}")
    return x


# -- the models ---------------------------------------------------------------------------


class _FlatTrees:
    """Two checked arrays and the row width they read; built from a model or from storage."""

    # Per-node entries past the nodes (words) and past the leaf values (reals).
    _EXTRA_WORDS = 0
    _EXTRA_REALS = 0

    n_features: int
    _words: WordArray
    _reals: FloatArray
    _shape: tuple[int]

    def _adopt(self, words: WordArray, reals: FloatArray, n_features: int) -> None:
        _check(
            words, reals, n_features, extra_words=self._EXTRA_WORDS, extra_reals=self._EXTRA_REALS
        )
        self.n_features = n_features
        self._words, self._reals = words, reals
        self._shape = (n_features,)
        _enable_disk_cache()  # before any kernel compiles (fit scores batches straight away)

    @classmethod
    def from_arrays(cls, words: WordArray, reals: FloatArray, n_features: int) -> Self:
        """The model from its stored arrays; ValueError if a kernel could misread them."""
        flat = cls.__new__(cls)
        flat._adopt(words, reals, n_features)
        return flat

    def arrays(self) -> tuple[WordArray, FloatArray]:
        """``(words, reals)``: everything the kernels read, for storage."""
        return self._words, self._reals

    def _nodes(self) -> WordArray:
        n_trees, steps, n_nodes = (int(v) for v in self._words[:_HEADER])
        start = _HEADER + steps + n_trees
        return self._words[start : start + 4 * n_nodes].reshape(n_nodes, 4)

    def _thresholds(self) -> FloatArray:
        raise NotImplementedError

    def splits(self) -> tuple[IndexArray, FloatArray]:
        """(feature, threshold) of every split: the values where a row changes direction."""
        nodes = self._nodes()
        split = nodes[:, 1] != np.arange(nodes.shape[0])  # a leaf points at itself
        return nodes[split, 0].astype(np.intp), self._thresholds()[split]


class FlatIsolationForest(_FlatTrees):
    """An IsolationForest's trees as flat arrays; ``score_samples`` for one or many rows."""

    _EXTRA_WORDS = 1  # the float32 threshold

    def __init__(self, forest: IsolationForest) -> None:
        from sklearn.ensemble._iforest import _average_path_length

        trees = [est.tree_ for est in forest.estimators_]
        sizes = [int(t.node_count) for t in trees]
        offsets = np.concatenate(([0], np.cumsum(sizes[:-1]))).astype(np.intp)
        left, right, missing, feature, threshold, leaf = [], [], [], [], [], []
        for t, (tree, features) in enumerate(zip(trees, forest.estimators_features_, strict=True)):
            n, base = sizes[t], int(offsets[t])
            own = np.arange(n) + base
            is_leaf = tree.children_left[:n] == -1
            to_left = np.where(is_leaf, own, tree.children_left[:n] + base)
            to_right = np.where(is_leaf, own, tree.children_right[:n] + base)
            left.append(to_left)
            right.append(to_right)
            # Trees grown on data with no NaN send it to the larger child (scikit-learn >= 1.3).
            missing.append(np.where(tree.missing_go_to_left[:n].astype(bool), to_left, to_right))
            # The tree's features index the subset it was grown on.
            feature.append(np.asarray(features)[np.where(is_leaf, 0, tree.feature[:n])])
            threshold.append(np.where(is_leaf, np.inf, tree.threshold[:n]))
            # What scikit-learn adds per tree for a row reaching this node.
            leaf.append(
                forest._decision_path_lengths[t][:n]
                + forest._average_path_length_per_tree[t][:n]
                - 1.0
            )
        words, old = _flatten(
            np.concatenate(left),
            np.concatenate(right),
            np.concatenate(missing),
            np.concatenate(feature),
            sizes,
            [int(t.max_depth) for t in trees],
        )
        thresholds = _float32_floor(np.concatenate(threshold)[old])
        denominator = float(len(trees) * _average_path_length([forest._max_samples])[0])
        self._adopt(
            np.concatenate((words, thresholds.view(np.uint32))),
            np.concatenate(([denominator], np.concatenate(leaf)[old])).astype(np.float64),
            int(forest.n_features_in_),
        )

    def _thresholds(self) -> FloatArray:
        n_nodes = self._nodes().shape[0]
        return self._words[-n_nodes:].view(np.float32).astype(np.float64)

    def score_samples(self, X: FloatArray) -> FloatArray:
        """Same as ``IsolationForest.score_samples`` (lower = more abnormal), rows of X."""
        return _forest_scores(_as_matrix(X, self.n_features), self._words, self._reals)

    def score_one(self, row: FloatArray) -> float:
        """``score_samples`` of a single row, bit for bit."""
        return _forest_score(_as_row(row, self._shape), self._words, self._reals)

    def warm_up(self) -> None:
        """Compile (or load) the kernels now, not on the first request."""
        zeros = np.zeros((1, self.n_features))
        self.score_one(zeros[0])
        self.score_samples(zeros)


class FlatGradientBoosting(_FlatTrees):
    """A binary HistGradientBoostingClassifier's trees as flat arrays (numeric features)."""

    _EXTRA_REALS = 1  # the float64 threshold

    def __init__(self, model: HistGradientBoostingClassifier) -> None:
        if model.n_trees_per_iteration_ != 1:
            raise ValueError(
                f"only binary classifiers are supported by the fast path, "
                f"got {len(model.classes_)} classes"
            )
        predictors: list[Any] = [stage[0] for stage in model._predictors]
        sizes = [int(p.nodes.shape[0]) for p in predictors]
        offsets = np.concatenate(([0], np.cumsum(sizes[:-1]))).astype(np.intp)
        left, right, missing, feature, threshold, value, depths = [], [], [], [], [], [], []
        for t, predictor in enumerate(predictors):
            records = predictor.nodes
            n, base = sizes[t], int(offsets[t])
            own = np.arange(n) + base
            is_leaf = records["is_leaf"].astype(bool)
            if np.any(records["is_categorical"][~is_leaf]):
                raise ValueError("categorical splits are not supported by the fast path")
            to_left = np.where(is_leaf, own, records["left"].astype(np.intp) + base)
            to_right = np.where(is_leaf, own, records["right"].astype(np.intp) + base)
            left.append(to_left)
            right.append(to_right)
            missing.append(np.where(records["missing_go_to_left"].astype(bool), to_left, to_right))
            feature.append(np.where(is_leaf, 0, records["feature_idx"]))
            threshold.append(np.where(is_leaf, np.inf, records["num_threshold"]))
            value.append(np.where(is_leaf, records["value"], 0.0))
            depths.append(int(records["depth"].max()))
        words, old = _flatten(
            np.concatenate(left),
            np.concatenate(right),
            np.concatenate(missing),
            np.concatenate(feature),
            sizes,
            depths,
        )
        baseline = float(np.ravel(model._baseline_prediction)[0])
        reals = np.concatenate(
            ([baseline], np.concatenate(value)[old], np.concatenate(threshold)[old])
        )
        self._adopt(words, reals.astype(np.float64), int(model.n_features_in_))

    def _thresholds(self) -> FloatArray:
        n_nodes = self._nodes().shape[0]
        return self._reals[1 + n_nodes :]

    def decision_function(self, X: FloatArray) -> FloatArray:
        """Raw log-odds, as ``HistGradientBoostingClassifier.decision_function``."""
        return _boosting_raws(_as_matrix(X, self.n_features), self._words, self._reals)

    def decision_one(self, row: FloatArray) -> float:
        """``decision_function`` of a single row, bit for bit."""
        return _boosting_raw(_as_row(row, self._shape), self._words, self._reals)

    def warm_up(self) -> None:
        """Compile (or load) the kernels now, not on the first request."""
        zeros = np.zeros((1, self.n_features))
        self.decision_one(zeros[0])
        self.decision_function(zeros)


class FlatEnsemble:
    """The forest and the boosted trees scored together: one call into numba per row.

    Each part's result is the one its own ``*_one`` method gives, bit for bit (the
    same compiled walk); only the call, ~0.4 µs, is shared.
    """

    def __init__(self, forest: FlatIsolationForest, boosting: FlatGradientBoosting | None) -> None:
        if boosting is not None and boosting.n_features != forest.n_features:
            raise ValueError(
                f"the forest reads {forest.n_features} features, the boosting {boosting.n_features}"
            )
        self.forest = forest
        self.boosting = boosting
        self._shape = forest._shape
        self._forest = (forest._words, forest._reals)
        # The kernel's arguments after the row, gathered once: attribute look-ups cost too.
        self._arrays: tuple[Any, ...] = self._forest
        if boosting is not None:
            self._arrays += (boosting._words, boosting._reals)

    def raw_one(self, row: FloatArray) -> tuple[float, float | None]:
        """(forest ``score_samples``, boosting log-odds or None) of one row."""
        x = _as_row(row, self._shape)
        if self.boosting is None:
            return _forest_score(x, *self._forest), None
        return _ensemble_raw(x, *self._arrays)

    def warm_up(self) -> None:
        """Compile (or load) every kernel this model uses, so no request waits for numba."""
        self.forest.warm_up()
        if self.boosting is not None:
            self.boosting.warm_up()
        self.raw_one(np.zeros(self.forest.n_features))
