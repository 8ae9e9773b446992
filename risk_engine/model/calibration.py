"""Monotone map from raw detector scores to [0, 1]: the ECDF of legitimate activity.

A calibrated 0.98 reads "riskier than 98% of normal activity". Past the largest
legitimate score an exponential tail keeps the map strictly increasing, so the
score still ranks the events that matter most (ROC AUC needs that).

The batch map (``__call__``) and the single-value one (``one``, on the request
path) do the same floating-point operations in the same order, so they agree to
the last bit on every platform: between knots ``slope[j] * (x - x[j]) + p[j]``,
as ``np.interp`` computes it but spelled out so that no compiler can fuse it into
one rounding on one side only; in the tails ``math.exp``, whose result does not
depend on which SIMD loop numpy picks for this CPU.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
N_KNOTS = 1001
# The lower tail never starts below this level, so it keeps a positive slope.
_FLOOR = 1e-6


@dataclass(frozen=True)
class Calibration:
    """Piecewise-linear ECDF over quantile knots, with exponential tails."""

    knots_x: FloatArray
    knots_p: FloatArray
    tail_scale: float
    # Derived from the knots, never stored (see __getstate__): Python floats for ``one``.
    _slopes: FloatArray = field(init=False, repr=False, compare=False)
    _xs: list[float] = field(init=False, repr=False, compare=False)
    _ps: list[float] = field(init=False, repr=False, compare=False)
    _slope_list: list[float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._derive()

    def _derive(self) -> None:
        """The segment slopes, and the knots as lists: bisect and float arithmetic, no numpy."""
        xs, ps = self.knots_x, self.knots_p
        slopes = np.diff(ps) / np.diff(xs)
        object.__setattr__(self, "_slopes", slopes)
        object.__setattr__(self, "_xs", xs.tolist())
        object.__setattr__(self, "_ps", ps.tolist())
        object.__setattr__(self, "_slope_list", slopes.tolist())

    def __getstate__(self) -> dict[str, Any]:
        # The pickled form stays the three fields, as models pickled before the caches.
        return {"knots_x": self.knots_x, "knots_p": self.knots_p, "tail_scale": self.tail_scale}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name in ("knots_x", "knots_p", "tail_scale"):
            object.__setattr__(self, name, state[name])
        self._derive()

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
        xs, ps = self.knots_x, self.knots_p
        lo_x, hi_x = float(xs[0]), float(xs[-1])
        lo_p, hi_p = float(ps[0]), float(ps[-1])
        if xs.size == 1:
            out = np.full_like(x, hi_p)
        else:
            # xs[j] <= x < xs[j + 1]; NaN lands on the last segment and stays NaN.
            j = np.clip(np.searchsorted(xs, x, side="right") - 1, 0, xs.size - 2)
            out = self._slopes[j] * (x - xs[j]) + ps[j]
            out[x == hi_x] = hi_p
        above = x > hi_x
        if np.any(above):
            z = -(x[above] - hi_x) / self.tail_scale
            out[above] = 1.0 - (1.0 - hi_p) * _exp(z)
        below = x < lo_x
        if np.any(below):
            z = (x[below] - lo_x) / self.tail_scale
            out[below] = max(lo_p, _FLOOR) * _exp(z)
        return out

    def one(self, raw: float) -> float:
        """``self(np.array([raw]))[0]``, bit for bit, in plain Python (the per-request path)."""
        xs, ps = self._xs, self._ps
        if raw > xs[-1]:
            return 1.0 - (1.0 - ps[-1]) * math.exp(-(raw - xs[-1]) / self.tail_scale)
        if raw < xs[0]:
            return max(ps[0], _FLOOR) * math.exp((raw - xs[0]) / self.tail_scale)
        if len(xs) == 1 or raw == xs[-1]:
            return ps[-1]
        if raw != raw:  # NaN
            return raw
        j = bisect.bisect_right(xs, raw) - 1
        return self._slope_list[j] * (raw - xs[j]) + ps[j]

    @classmethod
    def from_arrays(
        cls, knots_x: FloatArray, knots_p: FloatArray, tail_scale: float
    ) -> Calibration:
        """A stored calibration, checked: ValueError unless it is a monotone map into [0, 1]."""
        problems = []
        for name, knots in (("knots_x", knots_x), ("knots_p", knots_p)):
            if knots.dtype != np.float64 or knots.ndim != 1 or knots.size == 0:
                problems.append(f"{name} is not a non-empty float64 vector")
            elif not np.all(np.isfinite(knots)):
                problems.append(f"{name} holds a value that is not finite")
        if not problems:
            if knots_x.size != knots_p.size:
                problems.append(f"{knots_x.size} knots_x for {knots_p.size} knots_p")
            elif np.any(np.diff(knots_x) <= 0) or np.any(np.diff(knots_p) < 0):
                problems.append("the knots are not increasing")
            elif knots_p[0] < 0 or knots_p[-1] > 1:
                problems.append("knots_p leave [0, 1]")
        if not (math.isfinite(tail_scale) and tail_scale > 0):
            problems.append(f"tail_scale {tail_scale!r} is not a positive number")
        if problems:
            raise ValueError(f"invalid calibration: {'; '.join(problems)}")
        return cls(knots_x=knots_x, knots_p=knots_p, tail_scale=float(tail_scale))

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


def _exp(z: FloatArray) -> FloatArray:
    """``math.exp`` of each value: the exponential ``Calibration.one`` uses, to the bit."""
    return np.fromiter(map(math.exp, z.tolist()), dtype=np.float64, count=z.size)
