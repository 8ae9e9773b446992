"""The feature pipeline: one module per signal family, one registry."""

from risk_engine.features.observation import Observation, observe
from risk_engine.features.registry import (
    FAMILIES,
    FEATURE_NAMES,
    FEATURE_VERSION,
    SCHEMA_HASH,
    FeatureFamily,
    as_dict,
    compute_features,
)

__all__ = [
    "FAMILIES",
    "FEATURE_NAMES",
    "FEATURE_VERSION",
    "SCHEMA_HASH",
    "FeatureFamily",
    "Observation",
    "as_dict",
    "compute_features",
    "observe",
]
