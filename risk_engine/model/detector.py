"""The risk model: an unsupervised anomaly detector, optionally joined by a supervised one.

The IsolationForest learns what normal activity looks like from events not known
to be attacks, so it works with no labels at all. Where labels exist (confirmed
fraud, failed step-ups), a gradient-boosted classifier learns the attack patterns
seen so far. Each raw score is calibrated to the ECDF of legitimate training
events of users at the same stage (no history, a little, established): a user's
first login is unusual for the forest only because first logins are rare, and
should be compared with other first logins. The two are joined by their maximum
(either may raise the alarm; measured against a noisy-OR and log-odds mixes, the
maximum ranked best) and the result is calibrated once more, so the final score
keeps its meaning: "riskier than this share of normal activity".

A fitted model is data: the fast path's arrays (``fastpath.py``) and the
calibrations' knots, which ``to_arrays`` gives for the artifact and
``from_arrays`` checks and scores from. The scikit-learn detectors (``detector_``,
``supervised_``) exist only in the process that fitted them, where
``check_against_sklearn`` holds the arrays to them; they are never saved, and a
loaded model scores without scikit-learn (which it does not even import).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from risk_engine.features.registry import FEATURE_INDEX
from risk_engine.model.calibration import Calibration
from risk_engine.model.fastpath import FlatEnsemble, FlatGradientBoosting, FlatIsolationForest

if TYPE_CHECKING:  # imported by fit(): training needs scikit-learn, scoring does not
    from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest

FloatArray = NDArray[np.float64]

# Maturity strata: upper bounds of log1p(prior trusted events) per stratum.
_HISTORY = FEATURE_INDEX["history_log_events"]
STRATA_EDGES = (float(np.log1p(0.5)), float(np.log1p(4.5)), float(np.log1p(19.5)))
MIN_STRATUM_ROWS = 200


def stratum_of(history_log_events: FloatArray) -> NDArray[np.intp]:
    """0 = no history, 1 = 1-4 prior events, 2 = 5-19, 3 = 20 or more."""
    return np.searchsorted(np.asarray(STRATA_EDGES), history_log_events, side="right")


@dataclass
class DetectorParams:
    """Hyper-parameters, chosen by measurement on simulated data (see README)."""

    n_estimators: int = 200
    max_samples: int = 256
    supervised: bool = True
    supervised_max_iter: int = 150
    supervised_max_leaf_nodes: int = 15
    supervised_min_attacks: int = 20
    seed: int = 0


@dataclass
class RiskModel:
    """Fitted detector(s) and calibrations: raw features in, a score in [0, 1] out."""

    params: DetectorParams = field(default_factory=DetectorParams)
    detector_: IsolationForest | None = None
    supervised_: HistGradientBoostingClassifier | None = None
    unsupervised_calibration_: Calibration | None = None
    strata_calibration_: dict[int, Calibration] = field(default_factory=dict)
    supervised_calibration_: Calibration | None = None
    final_calibration_: Calibration | None = None
    _fast_forest: FlatIsolationForest | None = field(default=None, repr=False)
    _fast_boosting: FlatGradientBoosting | None = field(default=None, repr=False)
    _fast_ensemble: FlatEnsemble | None = field(default=None, repr=False)

    def fit(self, X: FloatArray, attack: NDArray[np.bool_] | None = None) -> RiskModel:
        """Fit on a feature matrix; ``attack`` marks rows known to be attacks (may be None)."""
        from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest

        X = np.asarray(X, dtype=np.float64)
        is_attack = np.zeros(X.shape[0], dtype=bool) if attack is None else np.asarray(attack)
        legit = X[~is_attack]
        if legit.shape[0] < 10:
            raise ValueError("training needs at least 10 events not known to be attacks")
        p = self.params
        self.detector_ = IsolationForest(
            n_estimators=p.n_estimators,
            max_samples=min(p.max_samples, legit.shape[0]),
            random_state=p.seed,
        ).fit(legit)
        self._fast_forest = FlatIsolationForest(self.detector_)
        raw_legit = self._raw_unsupervised(legit)
        self.unsupervised_calibration_ = Calibration.fit(raw_legit)
        strata = stratum_of(legit[:, _HISTORY])
        self.strata_calibration_ = {
            int(k): Calibration.fit(raw_legit[strata == k])
            for k in np.unique(strata)
            if int((strata == k).sum()) >= MIN_STRATUM_ROWS
        }
        self.supervised_ = None
        self.supervised_calibration_ = None
        if p.supervised and int(is_attack.sum()) >= p.supervised_min_attacks:
            self.supervised_ = HistGradientBoostingClassifier(
                max_iter=p.supervised_max_iter,
                max_leaf_nodes=p.supervised_max_leaf_nodes,
                learning_rate=0.1,
                class_weight="balanced",
                random_state=p.seed,
            ).fit(X, is_attack.astype(np.int8))
            self._fast_boosting = FlatGradientBoosting(self.supervised_)
            self.supervised_calibration_ = Calibration.fit(self._raw_supervised(legit))
        else:
            self._fast_boosting = None
        self.final_calibration_ = Calibration.fit(self._combined(legit))
        self._join_fast_paths()
        return self

    @property
    def kind(self) -> str:
        return "iforest+hgb" if self._fast_boosting is not None else "iforest"

    def flatten_fitted(self) -> None:
        """Build the fast path from the scikit-learn detectors, and compile it.

        ``fit`` builds it as it goes; this is for a model whose detectors were
        restored otherwise (a trusted pickle being converted to data). The first
        model in a process compiles the scoring kernels (3-4 s, or 0.3 s from
        numba's disk cache, see ``fastpath._enable_disk_cache``), so that no
        request pays for it.
        """
        if self.detector_ is None:
            raise ValueError("the model is not fitted")
        self._fast_forest = FlatIsolationForest(self.detector_)
        self._fast_boosting = (
            None if self.supervised_ is None else FlatGradientBoosting(self.supervised_)
        )
        self._join_fast_paths()

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        """(JSON-able description, named arrays): the whole fitted model, as data."""
        forest, boosting, final = self._fast_forest, self._fast_boosting, self.final_calibration_
        if forest is None or final is None or self.unsupervised_calibration_ is None:
            raise ValueError("the model is not fitted")
        arrays: dict[str, NDArray[Any]] = {}
        arrays["forest.words"], arrays["forest.reals"] = forest.arrays()
        if boosting is not None:
            arrays["boosting.words"], arrays["boosting.reals"] = boosting.arrays()
        scales: dict[str, float] = {}
        for name, calibration in self._calibrations().items():
            arrays[f"calibration.{name}.knots_x"] = calibration.knots_x
            arrays[f"calibration.{name}.knots_p"] = calibration.knots_p
            scales[name] = calibration.tail_scale
        meta = {
            "kind": self.kind,
            "n_features": forest.n_features,
            "params": asdict(self.params),
            "tail_scales": scales,
        }
        return meta, arrays

    def _calibrations(self) -> dict[str, Calibration]:
        named: dict[str, Calibration | None] = {
            "unsupervised": self.unsupervised_calibration_,
            **{f"stratum_{k}": c for k, c in sorted(self.strata_calibration_.items())},
            "supervised": self.supervised_calibration_,
            "final": self.final_calibration_,
        }
        return {name: c for name, c in named.items() if c is not None}

    @classmethod
    def from_arrays(
        cls, meta: dict[str, Any], arrays: dict[str, NDArray[Any]], n_features: int
    ) -> RiskModel:
        """The model ``to_arrays`` described, checked, compiled; ValueError naming any flaw.

        Every array a kernel reads is checked against what it could read out of
        bounds with; ``n_features`` is the row width of this engine's features.
        """
        if not isinstance(meta, dict) or not isinstance(meta.get("tail_scales"), dict):
            raise ValueError("the model description is not a mapping with tail_scales")
        if meta.get("n_features") != n_features:
            raise ValueError(
                f"the model reads {meta.get('n_features')!r} features, not {n_features}"
            )
        supervised = meta.get("kind") == "iforest+hgb"
        if meta.get("kind") not in ("iforest", "iforest+hgb"):
            raise ValueError(f"unknown model kind {meta.get('kind')!r}")
        scales: dict[str, Any] = meta["tail_scales"]
        strata = sorted(k for k in scales if k.startswith("stratum_"))
        known = {f"stratum_{k}" for k in range(len(STRATA_EDGES) + 1)}
        wanted = {"unsupervised", "final", *strata} | ({"supervised"} if supervised else set())
        if set(scales) != wanted or not set(strata) <= known:
            raise ValueError(f"unexpected calibrations {sorted(scales)}")
        expected = {
            f"calibration.{name}.{part}" for name in wanted for part in ("knots_x", "knots_p")
        }
        expected |= {"forest.words", "forest.reals"}
        if supervised:
            expected |= {"boosting.words", "boosting.reals"}
        if set(arrays) != expected:
            raise ValueError(
                f"unexpected arrays: missing {sorted(expected - set(arrays))}, "
                f"extra {sorted(set(arrays) - expected)}"
            )

        def calibration(name: str) -> Calibration:
            scale = scales[name]
            if not isinstance(scale, float | int) or isinstance(scale, bool):
                raise ValueError(f"tail scale of {name} is not a number")
            return Calibration.from_arrays(
                arrays[f"calibration.{name}.knots_x"],
                arrays[f"calibration.{name}.knots_p"],
                float(scale),
            )

        try:
            params = DetectorParams(**meta.get("params", {}))
        except TypeError as exc:
            raise ValueError(f"unexpected detector parameters: {exc}") from exc
        model = cls(params)
        model._fast_forest = FlatIsolationForest.from_arrays(
            arrays["forest.words"], arrays["forest.reals"], n_features
        )
        if supervised:
            model._fast_boosting = FlatGradientBoosting.from_arrays(
                arrays["boosting.words"], arrays["boosting.reals"], n_features
            )
            model.supervised_calibration_ = calibration("supervised")
        model.unsupervised_calibration_ = calibration("unsupervised")
        model.strata_calibration_ = {int(k.split("_")[1]): calibration(k) for k in strata}
        model.final_calibration_ = calibration("final")
        model._join_fast_paths()
        return model

    def check_against_sklearn(self, X: FloatArray, atol: float = 1e-9) -> None:
        """ValueError unless the fast path scores rows of X as the scikit-learn detectors do.

        Run where the model was fitted (or a trusted pickle converted): each
        detector's raw score, and the final score computed from scikit-learn's raw
        scores, within ``atol``.
        """
        if self.detector_ is None:
            raise ValueError("no scikit-learn detectors to check against (a loaded model)")
        X = np.asarray(X, dtype=np.float64)
        raw_u = -self.detector_.score_samples(X)
        raw_s = None if self.supervised_ is None else self.supervised_.decision_function(X)
        fast_u = self._raw_unsupervised(X)
        fast_s = None if raw_s is None else self._raw_supervised(X)
        pairs = [("forest", fast_u, raw_u)]
        if raw_s is not None and fast_s is not None:
            pairs.append(("boosting", fast_s, raw_s))
        assert self.final_calibration_ is not None
        # The final score is the calibrations' function of the raw scores checked above.
        # It is compared as that function of the fast raw scores: a calibration is
        # steep where its knots crowd, so raw scores 1e-16 apart (both right) may map
        # far apart there, which says nothing about the fast path.
        reference = self.final_calibration_(self._combine(X, fast_u, fast_s))
        pairs.append(("score", self.score(X), reference))
        for name, fast, slow in pairs:
            worst = float(np.nanmax(np.abs(fast - slow), initial=0.0))
            if not np.array_equal(np.isnan(fast), np.isnan(slow)) or not worst <= atol:
                raise ValueError(
                    f"the fast path's {name} differs from scikit-learn's by {worst:.3g} on"
                    f" {X.shape[0]} rows (allowed: {atol:g})"
                )

    def probe_rows(self, n: int = 4096, seed: int = 0) -> FloatArray:
        """Rows at, just below and just above the models' own splits, some NaN.

        Rows drawn this way take both branches at the splits, so that two scorers
        compared on them are compared on the paths through every tree.
        """
        parts = [m for m in (self._fast_forest, self._fast_boosting) if m is not None]
        if not parts:
            raise ValueError("the model is not fitted")
        n_features = parts[0].n_features
        features = np.concatenate([m.splits()[0] for m in parts])
        thresholds = np.concatenate([m.splits()[1] for m in parts])
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(n, n_features))
        for j in range(n_features):
            values = thresholds[(features == j) & np.isfinite(thresholds)]
            if values.size == 0:
                continue
            picked = rng.choice(values, size=n)
            step = rng.integers(0, 4, size=n)
            X[:, j] = np.select(
                [step == 0, step == 1, step == 2],
                [picked, np.nextafter(picked, -math.inf), np.nextafter(picked, math.inf)],
                picked + rng.normal(scale=0.01 + np.abs(picked) * 0.01, size=n),
            )
        holes = rng.random(X.shape) < 0.02
        holes[:, _HISTORY] = False
        X[holes] = np.nan
        return X

    def _join_fast_paths(self) -> None:
        """Both detectors in one kernel call per event, compiled now rather than on a request."""
        assert self._fast_forest is not None
        ensemble = FlatEnsemble(self._fast_forest, self._fast_boosting)
        ensemble.warm_up()
        self._fast_ensemble = ensemble

    def _raw_unsupervised(self, X: FloatArray) -> FloatArray:
        assert self._fast_forest is not None
        return -self._fast_forest.score_samples(X)

    def _raw_supervised(self, X: FloatArray) -> FloatArray:
        assert self._fast_boosting is not None
        return self._fast_boosting.decision_function(X)

    def _unsupervised(self, X: FloatArray, raw: FloatArray | None = None) -> FloatArray:
        """Forest scores (``raw``, or computed) calibrated within each row's maturity stratum."""
        assert self.unsupervised_calibration_ is not None
        raw = self._raw_unsupervised(X) if raw is None else raw
        out = self.unsupervised_calibration_(raw)
        strata = stratum_of(X[:, _HISTORY])
        for k, calibration in self.strata_calibration_.items():
            rows = strata == k
            if np.any(rows):
                out[rows] = calibration(raw[rows])
        return out

    def _combined(self, X: FloatArray) -> FloatArray:
        boosting = None if self.supervised_calibration_ is None else self._raw_supervised(X)
        return self._combine(X, self._raw_unsupervised(X), boosting)

    def _combine(
        self, X: FloatArray, forest: FloatArray, boosting: FloatArray | None
    ) -> FloatArray:
        """Both parts calibrated and joined, from their raw scores on the rows of X."""
        u = self._unsupervised(X, forest)
        if self.supervised_calibration_ is None or boosting is None:
            return u
        return np.maximum(u, self.supervised_calibration_(boosting))

    def score(self, X: FloatArray) -> FloatArray:
        """Calibrated risk in [0, 1] for each row (batch path)."""
        if self.final_calibration_ is None:
            raise ValueError("the model is not fitted")
        return self.final_calibration_(self._combined(np.asarray(X, dtype=np.float64)))

    def components(self, X: FloatArray) -> dict[str, FloatArray]:
        """The calibrated unsupervised and supervised parts, for analysis."""
        assert self.unsupervised_calibration_ is not None
        parts = {"unsupervised": self._unsupervised(X)}
        if self.supervised_calibration_ is not None:
            parts["supervised"] = self.supervised_calibration_(self._raw_supervised(X))
        return parts

    def score_one(self, row: FloatArray) -> float:
        """Calibrated risk of one event: the per-request fast path."""
        ensemble, final, unsup = (
            self._fast_ensemble,
            self.final_calibration_,
            self.unsupervised_calibration_,
        )
        if ensemble is None or final is None or unsup is None:
            raise ValueError("the model is not fitted or not prepared")
        # First: it checks the row's length (ValueError) before anything reads the row.
        forest_score, boosting_raw = ensemble.raw_one(row)
        # searchsorted(side="right") without turning the edges into an array per call.
        stratum = bisect.bisect_right(STRATA_EDGES, row[_HISTORY])
        u = self.strata_calibration_.get(stratum, unsup).one(-forest_score)
        if boosting_raw is not None and self.supervised_calibration_ is not None:
            u = max(u, self.supervised_calibration_.one(boosting_raw))
        return final.one(u)
