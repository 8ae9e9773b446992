"""Profile maturity, so the model tells a cold start from an established user."""

from __future__ import annotations

from risk_engine.decision import Reason
from risk_engine.features.common import DAY_S, FeatureView, Lesson, Weighted, log1p
from risk_engine.features.observation import Observation
from risk_engine.profiles.model import BurstCounts, Profile

NAMES: tuple[str, ...] = (
    "history_log_events",
    "history_log_days",
)


def compute(profile: Profile, bursts: BurstCounts, obs: Observation) -> tuple[float, ...]:
    age = (obs.ts - profile.created_ts) / DAY_S if profile.n_events else 0.0
    return (log1p(profile.n_events), log1p(age))


def learn(profile: Profile, obs: Observation, lesson: Lesson) -> None:
    """Nothing of its own: the trusted events and the first one's time, which every
    family reads, are counted by the learn step itself (``features/learn.py``)."""


def explain(
    profile: Profile, bursts: BurstCounts, obs: Observation, values: FeatureView
) -> list[Weighted]:
    """A user without history."""
    if profile.n_events == 0:
        return [(0.5, Reason(code="new_user", detail="no history for this user yet"))]
    return []
