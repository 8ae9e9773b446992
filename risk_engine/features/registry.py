"""The feature registry: the families in order, a version, a schema hash, the one compute.

Online scoring and offline training both call ``compute_features``; the model
artifact records ``SCHEMA_HASH`` and loading refuses a model built for another
feature set. The learn step (``features/learn.py``) and the reasons
(``reasons.explain``) go through the same families, in the same order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from risk_engine.features import (
    action,
    device,
    geo,
    maturity,
    sequence,
    session,
    temporal,
    velocity,
)
from risk_engine.features.common import FeatureView, Lesson, Weighted
from risk_engine.features.observation import Observation
from risk_engine.profiles.model import BurstCounts, Profile

FEATURE_VERSION = 5

Compute = Callable[[Profile, BurstCounts, Observation], tuple[float, ...]]
Learn = Callable[[Profile, Observation, Lesson], None]
Explain = Callable[[Profile, BurstCounts, Observation, FeatureView], list[Weighted]]


@dataclass(frozen=True, slots=True)
class FeatureFamily:
    """A group of signals with their names in order, as river's estimators pair them:
    ``compute`` scores an event against the profile as it was, ``learn`` folds the
    event into the profile afterwards, ``explain`` words the signals as reasons."""

    name: str
    names: tuple[str, ...]
    compute: Compute
    learn: Learn
    explain: Explain


FAMILIES: tuple[FeatureFamily, ...] = (
    FeatureFamily("geo", geo.NAMES, geo.compute, geo.learn, geo.explain),
    FeatureFamily("device", device.NAMES, device.compute, device.learn, device.explain),
    FeatureFamily("temporal", temporal.NAMES, temporal.compute, temporal.learn, temporal.explain),
    FeatureFamily("action", action.NAMES, action.compute, action.learn, action.explain),
    FeatureFamily("session", session.NAMES, session.compute, session.learn, session.explain),
    FeatureFamily("velocity", velocity.NAMES, velocity.compute, velocity.learn, velocity.explain),
    FeatureFamily("sequence", sequence.NAMES, sequence.compute, sequence.learn, sequence.explain),
    FeatureFamily("maturity", maturity.NAMES, maturity.compute, maturity.learn, maturity.explain),
)

FEATURE_NAMES: tuple[str, ...] = tuple(name for family in FAMILIES for name in family.names)
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}
SCHEMA_HASH: str = hashlib.sha256(
    f"v{FEATURE_VERSION}:{','.join(FEATURE_NAMES)}".encode()
).hexdigest()[:16]


def compute_features(profile: Profile, bursts: BurstCounts, obs: Observation) -> list[float]:
    """The feature vector of one observation against the profile as it was before it."""
    values: list[float] = []
    for family in FAMILIES:
        values.extend(family.compute(profile, bursts, obs))
    return values


def as_dict(values: list[float]) -> dict[str, float]:
    """Name each value (for reasons, audit records and the API's feature echo)."""
    return dict(zip(FEATURE_NAMES, values, strict=True))
