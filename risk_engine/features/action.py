"""Action signals: how sensitive the action is, how usual for the user, amount deviation."""

from __future__ import annotations

import math
import statistics

from risk_engine.decision import Reason
from risk_engine.features.common import FeatureView, Lesson, Weighted, familiarity, log1p
from risk_engine.features.observation import Observation
from risk_engine.profiles.model import (
    MAX_ACTIONS,
    MAX_AMOUNTS,
    BurstCounts,
    Profile,
    bump,
    push_bounded,
)

# What an attacker gains: reading < signing in < moving money < taking the account over.
SENSITIVITY: dict[str, float] = {
    "view_account": 0.1,
    "login": 0.3,
    "transfer": 0.7,
    "add_payee": 0.8,
    "change_password": 0.8,
    "change_email": 0.9,
    "change_mfa": 1.0,
    "grant_role": 1.0,
    "export_data": 0.9,
    "create_api_key": 0.9,
}
DEFAULT_SENSITIVITY = 0.5
# Actions that change who controls the account or where money can go.
ACCOUNT_CHANGES = frozenset(
    {
        "add_payee",
        "change_password",
        "change_email",
        "change_mfa",
        "grant_role",
        "create_api_key",
        "export_data",
    }
)
# Actions that hand out control or data (a role, an API key, an export): rare for most
# users and what an attacker on the device is after, so a user's first one is asked
# about whatever the score (policy floor ``first_privileged_action``).
PRIVILEGED_ACTIONS = frozenset({"grant_role", "create_api_key", "export_data"})
# Trusted events before "never done this" carries meaning.
FIRST_USE_MIN_EVENTS = 5
# Below this sensitivity a first use is no evidence (viewing the account).
FIRST_USE_MIN_SENSITIVITY = 0.5
# The action sensitivity from which an hour or a first use is worth a reason of its own.
SENSITIVE = 0.5
# A floor on the spread of log amounts: a user who always pays 20 is not alarmed by 25.
MIN_MAD = 0.25
MIN_AMOUNTS = 3
Z_CAP = 10.0
# An amount this many times (log) the largest of the user's recent ones is worded
# (amount_above_history); from FAR_ABOVE_HISTORY on it is amount_far_above_history.
ABOVE_HISTORY = math.log(1.5)
FAR_ABOVE_HISTORY = math.log(5.0)
# Fewer amounts than this say too little of the user's largest for "far above" (a
# new customer's first rent among a few small payments).
FAR_ABOVE_MIN_AMOUNTS = 5

NAMES: tuple[str, ...] = (
    "action_sensitivity",
    "action_familiarity",
    "account_change",
    "amount_log",
    "amount_z",
)


def amount_z(history: list[float], amount: float | None) -> float:
    """Robust z of log1p(amount) against the user's log amounts (median, MAD).

    >>> amount_z([math.log1p(20.0)] * 5, 20.0)
    0.0
    >>> amount_z([math.log1p(20.0)] * 5, 5000.0) > 5
    True
    """
    if amount is None or len(history) < MIN_AMOUNTS:
        return 0.0
    value = math.log1p(amount)
    median = statistics.median(history)
    mad = statistics.median(abs(x - median) for x in history)
    z = (value - median) / (1.4826 * max(mad, MIN_MAD))
    return max(-Z_CAP, min(Z_CAP, z))


def first_use(profile: Profile, obs: Observation) -> bool:
    """A sensitive action this established user has never taken in a trusted event."""
    return (
        profile.n_events >= FIRST_USE_MIN_EVENTS
        and SENSITIVITY.get(obs.action, 0.0) >= FIRST_USE_MIN_SENSITIVITY
        and obs.action not in profile.actions
    )


def first_privileged_use(profile: Profile, obs: Observation) -> bool:
    """The first privileged action (a role, an API key, an export) of an established user."""
    return obs.action in PRIVILEGED_ACTIONS and first_use(profile, obs)


def compute(profile: Profile, bursts: BurstCounts, obs: Observation) -> tuple[float, ...]:
    return (
        SENSITIVITY.get(obs.action, DEFAULT_SENSITIVITY),
        familiarity(profile.actions, obs.action),
        1.0 if obs.action in ACCOUNT_CHANGES else 0.0,
        log1p(obs.amount) if obs.amount is not None else 0.0,
        amount_z(profile.amounts, obs.amount),
    )


def learn(profile: Profile, obs: Observation, lesson: Lesson) -> None:
    """A trusted event's action and (log) amount."""
    if not lesson.trusted:
        return
    bump(profile.actions, obs.action, obs.ts, MAX_ACTIONS)
    if obs.amount is not None:
        push_bounded(profile.amounts, math.log1p(obs.amount), MAX_AMOUNTS)


def explain(
    profile: Profile, bursts: BurstCounts, obs: Observation, values: FeatureView
) -> list[Weighted]:
    """What is new about the action itself: its amount, its payee, a first use.

    Some of these read the sequence family's signals (the amount above the largest,
    the new payee, the first use): they describe the action, whichever family
    computes them.
    """
    out: list[Weighted] = []
    z = values["amount_z"]
    if z >= 3 and obs.amount is not None:
        typical = math.expm1(sorted(profile.amounts)[len(profile.amounts) // 2])
        out.append(
            (
                4.0,
                Reason(
                    code="unusual_amount",
                    detail=f"amount {obs.amount:,.2f} vs usual {typical:,.2f} (robust z {z:.1f})",
                ),
            )
        )
    over = values["amount_over_max_log"]
    if over >= ABOVE_HISTORY and obs.amount is not None:
        largest = math.expm1(max(profile.amounts))
        # Far above is a reason of its own: the shipped policy steps it up at any hour,
        # where malware on the user's own device by day shows nothing else.
        far = over >= FAR_ABOVE_HISTORY and len(profile.amounts) >= FAR_ABOVE_MIN_AMOUNTS
        out.append(
            (
                5.0 if far else 4.0,
                Reason(
                    code="amount_far_above_history" if far else "amount_above_history",
                    detail=f"amount {obs.amount:,.2f} is {math.exp(over):.1f}x the largest of "
                    f"the last {len(profile.amounts)} amounts ({largest:,.2f})",
                ),
            )
        )
    if values["new_payee"]:
        amount = f" of {obs.amount:,.2f}" if obs.amount is not None else ""
        out.append(
            (
                2.5,
                Reason(
                    code="new_payee",
                    detail=f"transfer{amount} to a payee never paid before "
                    f"({len(profile.payees)} payees paid)",
                ),
            )
        )
    if values["first_use_sensitivity"]:
        out.append(
            (
                3.0,
                Reason(
                    code="first_use",
                    detail=f"first {obs.action} in {profile.n_events} events of this user",
                ),
            )
        )
        if first_privileged_use(profile, obs):
            out.append(
                (
                    6.0,
                    Reason(
                        code="first_privileged_action",
                        detail=f"first {obs.action} (hands out control or data) in "
                        f"{profile.n_events} events of this user",
                    ),
                )
            )
    elif values["account_change"] and values["action_familiarity"] == 0.0:
        out.append(
            (2.0, Reason(code="sensitive_action", detail=f"first {obs.action} for this user"))
        )
    return out
