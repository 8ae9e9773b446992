"""Intent signals: what an attacker on the victim's own device does, and in what order.

Malware or a thief on the user's own phone or laptop, at home, shows no new
device and no new place: what gives it away is the behaviour. A payee added and
paid within minutes, a credential changed and then money moved or data taken, an
action this user has never taken, at an hour the user is never active, an amount
above anything the user ever moved, to someone the user never paid.
"""

from __future__ import annotations

import math

from risk_engine.features.action import MIN_AMOUNTS, SENSITIVITY
from risk_engine.features.common import log1p
from risk_engine.features.observation import Observation
from risk_engine.features.temporal import hour_of_day_probability
from risk_engine.profiles.model import BurstCounts, Profile, Step

# "Within minutes": how long after a payee or credential step a money action follows it.
SEQUENCE_WINDOW_S = 30 * 60.0
# Actions that move money or take control or data, once a way is open.
MONEY_ACTIONS = frozenset({"transfer"})
CONTROL_ACTIONS = frozenset(
    {"transfer", "add_payee", "export_data", "create_api_key", "grant_role"}
)
# Actions that hand out control or data (a role, an API key, an export): rare for most
# users and what an attacker on the device is after, so a user's first one is asked
# about whatever the score (policy floor ``first_privileged_action``).
PRIVILEGED_ACTIONS = frozenset({"grant_role", "create_api_key", "export_data"})
# Trusted events before "never done this" and "never at this hour" carry meaning.
FIRST_USE_MIN_EVENTS = 5
QUIET_MIN_EVENTS = 10
# Below this sensitivity a first use is no evidence (viewing the account).
FIRST_USE_MIN_SENSITIVITY = 0.5
AMOUNT_OVER_CAP = 20.0

NAMES: tuple[str, ...] = (
    "payee_then_transfer",
    "credential_then_money",
    "first_use_sensitivity",
    "quiet_hour_sensitivity",
    "amount_over_max_log",
    "new_payee",
    "session_age_log_min",
)


def preceding_step(profile: Profile, obs: Observation, kind: str) -> Step | None:
    """The latest ``kind`` step in the window before this event, in its session if any.

    A step of another session than the event's does not count: two sessions of the
    same user at once are the session signals' business. For a payee step, a named
    payee must be the one this event pays.
    """
    horizon = obs.ts - SEQUENCE_WINDOW_S
    found: Step | None = None
    for step in profile.steps:
        if step.kind != kind or not horizon <= step.ts <= obs.ts:
            continue
        if obs.session_id and step.session_id and step.session_id != obs.session_id:
            continue
        if kind == "payee" and obs.payee_key and step.payee and step.payee != obs.payee_key:
            continue
        if found is None or step.ts >= found.ts:
            found = step
    return found


def quietness(profile: Profile, hour_of_week: int) -> float:
    """How far below a flat day this local hour is for the user: 0 (usual) to 1 (never).

    0 without enough history to know the user's hours.
    """
    if profile.n_events < QUIET_MIN_EVENTS:
        return 0.0
    p = hour_of_day_probability(profile.hours, hour_of_week % 24)
    return max(0.0, 1.0 - 24.0 * p)


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


def amount_over_max(history: list[float], amount: float | None) -> float:
    """log1p(amount) above the largest of the user's log amounts; 0 when not above.

    >>> amount_over_max([math.log1p(99.0)] * 3, 999.0) > 2.3
    True
    >>> amount_over_max([math.log1p(99.0)] * 3, 50.0)
    0.0
    """
    if amount is None or len(history) < MIN_AMOUNTS:
        return 0.0
    return min(AMOUNT_OVER_CAP, max(0.0, math.log1p(amount) - max(history)))


def is_new_payee(profile: Profile, obs: Observation) -> bool:
    """A transfer to a named payee this user has never paid in a trusted transfer."""
    return (
        obs.action in MONEY_ACTIONS
        and bool(obs.payee_key)
        and profile.n_events > 0
        and obs.payee_key not in profile.payees
    )


def compute(profile: Profile, bursts: BurstCounts, obs: Observation) -> tuple[float, ...]:
    action = obs.action
    sensitivity = SENSITIVITY.get(action, 0.0)
    steps = profile.steps
    payee_step = (
        preceding_step(profile, obs, "payee") if steps and action in MONEY_ACTIONS else None
    )
    credential_step = (
        preceding_step(profile, obs, "credential") if steps and action in CONTROL_ACTIONS else None
    )
    record = profile.sessions.get(obs.session_id) if obs.session_id else None
    age_min = 0.0
    if record is not None and record.start_ts is not None:
        age_min = (obs.ts - record.start_ts) / 60.0
    return (
        0.0 if payee_step is None else 1.0,
        0.0 if credential_step is None else 1.0,
        sensitivity if first_use(profile, obs) else 0.0,
        sensitivity * quietness(profile, obs.hour_of_week),
        amount_over_max(profile.amounts, obs.amount),
        1.0 if is_new_payee(profile, obs) else 0.0,
        log1p(age_min),
    )
