"""The feature registry: the ordered names, a version, a schema hash, and the one compute.

Online scoring and offline training both call ``compute_features``; the model
artifact records ``SCHEMA_HASH`` and loading refuses a model built for another
feature set.
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
from risk_engine.features.observation import Observation
from risk_engine.profiles.model import BurstCounts, Profile

FEATURE_VERSION = 3

Compute = Callable[[Profile, BurstCounts, Observation], tuple[float, ...]]


@dataclass(frozen=True, slots=True)
class FeatureFamily:
    """A group of signals computed together, with their names in order."""

    name: str
    names: tuple[str, ...]
    compute: Compute


FAMILIES: tuple[FeatureFamily, ...] = (
    FeatureFamily("geo", geo.NAMES, geo.compute),
    FeatureFamily("device", device.NAMES, device.compute),
    FeatureFamily("temporal", temporal.NAMES, temporal.compute),
    FeatureFamily("action", action.NAMES, action.compute),
    FeatureFamily("session", session.NAMES, session.compute),
    FeatureFamily("velocity", velocity.NAMES, velocity.compute),
    FeatureFamily("sequence", sequence.NAMES, sequence.compute),
    FeatureFamily("maturity", maturity.NAMES, maturity.compute),
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
