"""Time signals: how usual this local hour is for the user, and the gap since last seen."""

from __future__ import annotations

from risk_engine.features.common import DAY_S, log1p
from risk_engine.features.observation import Observation
from risk_engine.profiles.model import HOURS_OF_WEEK, BurstCounts, Profile

# Pseudo-counts with which the daily rhythm stands in for unseen hours of the week.
WEEK_PRIOR = 10.0
# Pseudo-counts of a flat prior over the 24 hours of the day.
DAY_PRIOR = 2.0

NAMES = (
    "hour_of_week_familiarity",
    "hour_of_day_familiarity",
    "gap_log_days",
)


def hour_of_day_probability(hours: list[float], hour: int) -> float:
    """P(hour of day) from the week histogram, kernel-smoothed over neighbouring hours."""
    # Each hour's column of the week, added in index order as a loop over it would.
    daily = [sum(hours[hour_of_day::24], 0.0) for hour_of_day in range(24)]
    total = sum(daily)
    smoothed = daily[hour] + 0.5 * (daily[(hour - 1) % 24] + daily[(hour + 1) % 24])
    return (smoothed + DAY_PRIOR / 24.0 * 2.0) / (2.0 * total + DAY_PRIOR * 2.0)


def hour_of_week_probability(hours: list[float], how: int) -> float:
    """P(hour of week): smoothed over neighbouring hours, the daily rhythm as prior."""
    total = sum(hours)
    smoothed = hours[how] + 0.5 * (
        hours[(how - 1) % HOURS_OF_WEEK] + hours[(how + 1) % HOURS_OF_WEEK]
    )
    prior = hour_of_day_probability(hours, how % 24) / 7.0
    return (smoothed + WEEK_PRIOR * prior * 2.0) / (2.0 * total + WEEK_PRIOR * 2.0)


def compute(profile: Profile, bursts: BurstCounts, obs: Observation) -> tuple[float, ...]:
    how = obs.hour_of_week
    gap = (obs.ts - profile.last_ts) / DAY_S if profile.n_events else 0.0
    return (
        HOURS_OF_WEEK * hour_of_week_probability(profile.hours, how),
        24.0 * hour_of_day_probability(profile.hours, how % 24),
        log1p(gap),
    )
