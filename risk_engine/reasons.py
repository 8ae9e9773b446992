"""Human reasons: which signals drove a decision, with the numbers behind them.

Computed from the feature vector and the profile as it was BEFORE the event was
learned, so "new device" means new before this event. Each feature family words
its own signals (``explain`` in its module); here they are gathered in registry
order and ordered by weight, most important first (equal weights keep that order).
Each reason has a stable code.
"""

from __future__ import annotations

from risk_engine.decision import Reason
from risk_engine.features import crowd as crowd_features
from risk_engine.features.common import FeatureView, Weighted
from risk_engine.features.observation import Observation
from risk_engine.features.registry import FAMILIES, FEATURE_INDEX
from risk_engine.profiles.model import BurstCounts, Profile


def explain(
    profile: Profile, bursts: BurstCounts, obs: Observation, values: list[float]
) -> list[Reason]:
    """The reasons for one scored event, most important first."""
    view = FeatureView(values, FEATURE_INDEX)
    weighted: list[Weighted] = []
    for family in FAMILIES:
        weighted.extend(family.explain(profile, bursts, obs, view))
    # Population familiarity has no feature of its own (features.crowd), only a reason.
    weighted.extend(crowd_features.explain(profile, bursts, obs))
    weighted.sort(key=lambda item: -item[0])
    return [reason for _, reason in weighted]
