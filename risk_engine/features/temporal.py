"""Time signals: how usual this local hour is for the user, and the gap since last seen."""

from __future__ import annotations

from risk_engine.features.common import DAY_S, log1p
from risk_engine.features.observation import Observation
from risk_engine.profiles.model import HOURS_OF_WEEK, BurstCounts, Profile

# Pseudo-counts with which the daily rhythm stands in for unseen hours of the week.
WEEK_PRIOR = 10.0
# Pseudo-counts of a flat prior over the 24 hours of the day.
DAY_PRIOR = 2.0

NAMES: tuple[str, ...] = (
    "hour_of_week_familiarity",
    "hour_of_day_familiarity",
    "gap_log_days",
)


def hour_of_day_probability(hours: list[float], hour: int, total: float | None = None) -> float:
    """P(hour of day) from the week histogram, kernel-smoothed over neighbouring hours.

    ``total`` is ``sum(hours)`` when the caller has it already: the week's mass is
    the day's, so only the three columns around ``hour`` need adding up.
    """
    if total is None:
        total = sum(hours)

    def column(hour_of_day: int) -> float:
        # The hour's seven days of the week, added Monday first.
        return sum(hours[hour_of_day::24], 0.0)

    smoothed = column(hour) + 0.5 * (column((hour - 1) % 24) + column((hour + 1) % 24))
    return (smoothed + DAY_PRIOR / 24.0 * 2.0) / (2.0 * total + DAY_PRIOR * 2.0)


def hour_of_week_probability(hours: list[float], how: int, total: float | None = None) -> float:
    """P(hour of week): smoothed over neighbouring hours, the daily rhythm as prior."""
    if total is None:
        total = sum(hours)
    smoothed = hours[how] + 0.5 * (
        hours[(how - 1) % HOURS_OF_WEEK] + hours[(how + 1) % HOURS_OF_WEEK]
    )
    prior = hour_of_day_probability(hours, how % 24, total) / 7.0
    return (smoothed + WEEK_PRIOR * prior * 2.0) / (2.0 * total + WEEK_PRIOR * 2.0)


def compute(profile: Profile, bursts: BurstCounts, obs: Observation) -> tuple[float, ...]:
    how = obs.hour_of_week
    hours = profile.hours
    total = sum(hours)
    gap = (obs.ts - profile.last_ts) / DAY_S if profile.n_events else 0.0
    return (
        HOURS_OF_WEEK * hour_of_week_probability(hours, how, total),
        24.0 * hour_of_day_probability(hours, how % 24, total),
        log1p(gap),
    )
