"""Velocity and burst signals: failures and activity for the user, the address, the network.

How many accounts use an address tells of credential stuffing only where the user
is a stranger: an office or a carrier network the user has used in trusted events,
or one where many other users have succeeded on earlier days (features.crowd), is
shared by many by nature, so there its crowd counts as one account at most (never
fewer than the failures imply: a lone failed login is one account). Failures
count everywhere.
"""

from __future__ import annotations

import math

from risk_engine.decision import Reason
from risk_engine.features.common import HOUR_S, FeatureView, Lesson, Weighted, log1p
from risk_engine.features.crowd import crowded
from risk_engine.features.geo import family_count
from risk_engine.features.observation import Observation
from risk_engine.profiles.model import (
    MAX_FAILURES,
    MAX_RECENT,
    BurstCounts,
    Profile,
    push_bounded,
)

NAMES: tuple[str, ...] = (
    "login_failed",
    "user_failures_1h",
    "user_events_1h",
    "ip_users_1h",
    "ip_failures_1h",
    "network_users_1h",
    "network_failures_1h",
)


def recent_count(timestamps: list[float], now: float, window: float = HOUR_S) -> int:
    """How many timestamps fall in (now - window, now]."""
    start = now - window
    return len([ts for ts in timestamps if start < ts <= now])


def home_network(profile: Profile, obs: Observation) -> bool:
    """The address, its network or its network family was seen in a trusted event."""
    return (
        obs.ip_key in profile.ips
        or obs.network in profile.networks
        or (bool(profile.families) and family_count(profile, obs) > 0.0)
    )


def shared_network(profile: Profile, bursts: BurstCounts, obs: Observation) -> bool:
    """A network shared by many by nature: the user's own, or a crowd's in the user's country."""
    return home_network(profile, obs) or crowded(profile, bursts, obs)


def compute(profile: Profile, bursts: BurstCounts, obs: Observation) -> tuple[float, ...]:
    shared = shared_network(profile, bursts, obs)
    return (
        0.0 if obs.success else 1.0,
        log1p(recent_count(profile.failures, obs.ts)),
        log1p(recent_count(profile.recent, obs.ts)),
        log1p(min(bursts.ip_users, 1) if shared else bursts.ip_users),
        log1p(bursts.ip_failures),
        log1p(min(bursts.network_users, 1) if shared else bursts.network_users),
        log1p(bursts.network_failures),
    )


def learn(profile: Profile, obs: Observation, lesson: Lesson) -> None:
    """Every event seen counts as activity, a failed login or step-up as a failure.

    Whatever the decision: a refused or pending event is no less activity.
    """
    if lesson.seen:
        push_bounded(profile.recent, obs.ts, MAX_RECENT)
        if obs.action == "login" and not obs.success:
            push_bounded(profile.failures, obs.ts, MAX_FAILURES)
    if lesson.failed_at is not None:
        push_bounded(profile.failures, lesson.failed_at, MAX_FAILURES)


def explain(
    profile: Profile, bursts: BurstCounts, obs: Observation, values: FeatureView
) -> list[Weighted]:
    """The user's failed logins; many accounts from this address or network."""
    out: list[Weighted] = []
    failures = round(math.expm1(values["user_failures_1h"]))
    if failures >= 3:
        out.append(
            (3.0, Reason(code="failed_logins", detail=f"{failures} failed logins in the last hour"))
        )
    # A network the user trusts, or a crowd's, is shared by many by nature (an office,
    # a carrier).
    shared = shared_network(profile, bursts, obs)
    if bursts.ip_users >= 5 and not (shared and bursts.ip_failures == 0):
        out.append(
            (
                5.0,
                Reason(
                    code="ip_burst",
                    detail=f"{bursts.ip_users} accounts from this address in the last hour, "
                    f"{bursts.ip_failures} failed",
                ),
            )
        )
    elif bursts.network_users >= 10 and not shared:
        out.append(
            (
                3.0,
                Reason(
                    code="network_burst",
                    detail=f"{bursts.network_users} accounts from {obs.network} in the last hour",
                ),
            )
        )
    return out
