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
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest

from risk_engine.features.registry import FEATURE_INDEX
from risk_engine.model.calibration import Calibration
from risk_engine.model.fastpath import FlatEnsemble, FlatGradientBoosting, FlatIsolationForest

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
        return "iforest+hgb" if self.supervised_ is not None else "iforest"

    def prepare(self) -> None:
        """Build the fast-path arrays (after unpickling; they are not stored) and compile them.

        The first model prepared in a process compiles the scoring kernels (3-4 s, or
        0.3 s from numba's disk cache, see ``fastpath._enable_disk_cache``), so that
        no request pays for it.
        """
        if self.detector_ is None:
            raise ValueError("the model is not fitted")
        self._fast_forest = FlatIsolationForest(self.detector_)
        self._fast_boosting = (
            None if self.supervised_ is None else FlatGradientBoosting(self.supervised_)
        )
        self._join_fast_paths()

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

    def _unsupervised(self, X: FloatArray) -> FloatArray:
        """Forest scores calibrated within each row's maturity stratum."""
        assert self.unsupervised_calibration_ is not None
        raw = self._raw_unsupervised(X)
        out = self.unsupervised_calibration_(raw)
        strata = stratum_of(X[:, _HISTORY])
        for k, calibration in self.strata_calibration_.items():
            rows = strata == k
            if np.any(rows):
                out[rows] = calibration(raw[rows])
        return out

    def _combined(self, X: FloatArray) -> FloatArray:
        u = self._unsupervised(X)
        if self.supervised_calibration_ is None:
            return u
        s = self.supervised_calibration_(self._raw_supervised(X))
        return np.maximum(u, s)

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

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_fast_forest"] = None
        state["_fast_boosting"] = None
        state["_fast_ensemble"] = None
        return state
