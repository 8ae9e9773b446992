"""Time signals: how usual this local hour is for the user, and the gap since last seen."""

from __future__ import annotations

import math

from risk_engine.decision import Reason
from risk_engine.features.action import SENSITIVE, SENSITIVITY
from risk_engine.features.common import DAY_S, FeatureView, Lesson, Weighted, log1p
from risk_engine.features.observation import Observation
from risk_engine.profiles.model import HOUR_MASS_CAP, HOURS_OF_WEEK, BurstCounts, Profile

# Pseudo-counts with which the daily rhythm stands in for unseen hours of the week.
WEEK_PRIOR = 10.0
# Pseudo-counts of a flat prior over the 24 hours of the day.
DAY_PRIOR = 2.0
# Trusted events before "never at this hour" carries meaning.
QUIET_MIN_EVENTS = 10
# A sensitive action at an hour this far below the user's flat day is a quiet-hour action.
QUIET_HOUR = 0.6

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


def quietness(profile: Profile, hour_of_week: int) -> float:
    """How far below a flat day this local hour is for the user: 0 (usual) to 1 (never).

    0 without enough history to know the user's hours.
    """
    if profile.n_events < QUIET_MIN_EVENTS:
        return 0.0
    p = hour_of_day_probability(profile.hours, hour_of_week % 24)
    return max(0.0, 1.0 - 24.0 * p)


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


def learn(profile: Profile, obs: Observation, lesson: Lesson) -> None:
    """A trusted event's local hour of week, halving the histogram at its cap."""
    if not lesson.trusted:
        return
    hours = profile.hours
    hours[obs.hour_of_week] += 1.0
    if sum(hours) > HOUR_MASS_CAP:
        profile.hours = [h * 0.5 for h in hours]


def explain(
    profile: Profile, bursts: BurstCounts, obs: Observation, values: FeatureView
) -> list[Weighted]:
    """A sensitive action at the user's quiet hours, an unusual hour, a long silence."""
    out: list[Weighted] = []
    sensitivity = SENSITIVITY.get(obs.action, 0.0)
    quiet = quietness(profile, obs.hour_of_week)
    if sensitivity >= SENSITIVE and quiet >= QUIET_HOUR:
        hour = obs.hour_of_week % 24
        out.append(
            (
                3.0,
                Reason(
                    code="quiet_hour_action",
                    detail=f"{obs.action} at {hour:02d}:00 local time, an hour with "
                    f"{values['hour_of_day_familiarity'] / 24.0:.1%} of this user's "
                    f"activity in {profile.n_events} events",
                ),
            )
        )
    elif profile.n_events >= 10 and values["hour_of_day_familiarity"] < 0.25:
        hour = obs.hour_of_week % 24
        out.append(
            (
                2.0,
                Reason(
                    code="unusual_hour",
                    detail=f"{hour:02d}:00 local time is rare for this user",
                ),
            )
        )
    gap_days = math.expm1(values["gap_log_days"])
    if gap_days >= 60:
        out.append(
            (1.5, Reason(code="dormant_account", detail=f"first activity in {gap_days:.0f} days"))
        )
    return out
