"""Monotone map from raw detector scores to [0, 1]: the ECDF of legitimate activity.

A calibrated 0.98 reads "riskier than 98% of normal activity". Past the largest
legitimate score an exponential tail keeps the map strictly increasing, so the
score still ranks the events that matter most (ROC AUC needs that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
N_KNOTS = 1001


@dataclass(frozen=True)
class Calibration:
    """Piecewise-linear ECDF over quantile knots, with exponential tails."""

    knots_x: FloatArray
    knots_p: FloatArray
    tail_scale: float

    @classmethod
    def fit(cls, raw: FloatArray) -> Calibration:
        """Fit on raw scores of legitimate events (higher = riskier)."""
        values = np.sort(np.asarray(raw, dtype=np.float64))
        if values.size == 0:
            raise ValueError("calibration needs at least one score")
        n = values.size
        qs = np.linspace(0.0, 1.0, min(N_KNOTS, n))
        xs = np.quantile(values, qs)
        # Keep knots strictly increasing; ties collapse to their highest quantile.
        xs, last = np.unique(xs[::-1], return_index=True)
        ps = qs[::-1][last]
        # Map the quantile levels onto [1/(n+1), n/(n+1)]: room above the largest legitimate
        # score, and the smallest stays above 0 so the lower tail below it keeps the order.
        ps = (ps * (n - 1.0) + 1.0) / (n + 1.0)
        spread = float(values[-1] - np.quantile(values, 0.99))
        scale = spread if spread > 1e-9 else max(abs(float(values[-1])) * 0.01, 1e-3)
        return cls(knots_x=xs, knots_p=ps, tail_scale=scale)

    def __call__(self, raw: FloatArray) -> FloatArray:
        x = np.asarray(raw, dtype=np.float64)
        lo_x, hi_x = self.knots_x[0], self.knots_x[-1]
        lo_p, hi_p = self.knots_p[0], self.knots_p[-1]
        if self.knots_x.size == 1:
            out = np.full_like(x, hi_p)
        else:
            out = np.interp(x, self.knots_x, self.knots_p)
        above = x > hi_x
        if np.any(above):
            out[above] = 1.0 - (1.0 - hi_p) * np.exp(-(x[above] - hi_x) / self.tail_scale)
        below = x < lo_x
        if np.any(below):
            floor = max(lo_p, 1e-6)
            out[below] = floor * np.exp((x[below] - lo_x) / self.tail_scale)
        return out

    def one(self, raw: float) -> float:
        """The calibrated value of one raw score (no array allocation on the hot path)."""
        xs, ps = self.knots_x, self.knots_p
        if raw > xs[-1]:
            return float(1.0 - (1.0 - ps[-1]) * np.exp(-(raw - xs[-1]) / self.tail_scale))
        if raw < xs[0]:
            return float(max(ps[0], 1e-6) * np.exp((raw - xs[0]) / self.tail_scale))
        if xs.size == 1:
            return float(ps[-1])
        return float(np.interp(raw, xs, ps))

    def to_dict(self) -> dict[str, Any]:
        return {
            "knots_x": self.knots_x.tolist(),
            "knots_p": self.knots_p.tolist(),
            "tail_scale": self.tail_scale,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(
            knots_x=np.asarray(data["knots_x"], dtype=np.float64),
            knots_p=np.asarray(data["knots_p"], dtype=np.float64),
            tail_scale=float(data["tail_scale"]),
        )
