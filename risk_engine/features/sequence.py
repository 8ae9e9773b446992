"""Intent signals: what an attacker on the victim's own device does, and in what order.

Malware or a thief on the user's own phone or laptop, at home, shows no new
device and no new place: what gives it away is the behaviour. A payee added and
paid within minutes, a credential changed and then money moved or data taken, an
action this user has never taken, at an hour the user is never active, an amount
above anything the user ever moved, to someone the user never paid.
"""

from __future__ import annotations

import math

from risk_engine.decision import Reason
from risk_engine.features.action import MIN_AMOUNTS, SENSITIVE, SENSITIVITY, first_use
from risk_engine.features.common import FeatureView, Lesson, Weighted, duration_text, log1p
from risk_engine.features.observation import Observation
from risk_engine.features.session import session_of
from risk_engine.features.temporal import QUIET_HOUR, quietness
from risk_engine.profiles.model import (
    MAX_PAYEES,
    MAX_STEPS,
    BurstCounts,
    Profile,
    Step,
    bump,
    push_bounded,
)

# "Within minutes": how long after a payee or credential step a money action follows it.
SEQUENCE_WINDOW_S = 30 * 60.0
# Actions that move money or take control or data, once a way is open.
MONEY_ACTIONS = frozenset({"transfer"})
CONTROL_ACTIONS = frozenset(
    {"transfer", "add_payee", "export_data", "create_api_key", "grant_role"}
)
AMOUNT_OVER_CAP = 20.0
# An amount this many times (in log) the largest the user moved is a takeover's at quiet hours.
TAKEOVER_AMOUNT_OVER = math.log(2.0)
# The steps that open a way to money or control, by action: a money action shortly
# after one is a sequence signal.
STEP_KINDS: dict[str, str] = {
    "add_payee": "payee",
    "change_password": "credential",
    "change_email": "credential",
    "change_mfa": "credential",
}

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


def learn(profile: Profile, obs: Observation, lesson: Lesson) -> None:
    """Every step that opens a way to money or control; a trusted transfer's payee.

    Like failures, steps only ever add suspicion to what follows them, so even a
    refused or pending one is kept: a transfer right after a denied payee is no
    less telling. A payee becomes familiar by being paid, not by being added.
    """
    if lesson.seen:
        kind = STEP_KINDS.get(obs.action)
        if kind is not None:
            step = Step(obs.ts, kind, obs.action, obs.session_id, obs.payee_key)
            push_bounded(profile.steps, step, MAX_STEPS)
    if lesson.trusted and obs.payee_key and obs.action == "transfer":
        bump(profile.payees, obs.payee_key, obs.ts, MAX_PAYEES)


def _since_login(profile: Profile, obs: Observation) -> str:
    record = session_of(profile, obs)
    if record is None or record.start_ts is None:
        return ""
    return f", {duration_text(obs.ts - record.start_ts)} into the session"


def explain(
    profile: Profile, bursts: BurstCounts, obs: Observation, values: FeatureView
) -> list[Weighted]:
    """A payee or credential step shortly before money moved; a takeover at quiet hours."""
    out: list[Weighted] = []
    amount = f" of {obs.amount:,.2f}" if obs.amount is not None else ""
    if values["payee_then_transfer"]:
        step = preceding_step(profile, obs, "payee")
        if step is not None:
            which = "that payee" if step.payee and obs.payee_key else "a payee"
            out.append(
                (
                    6.0,
                    Reason(
                        code="payee_then_transfer",
                        detail=f"{obs.action}{amount} to {which} added "
                        f"{duration_text(obs.ts - step.ts)} before{_since_login(profile, obs)}",
                    ),
                )
            )
    if values["credential_then_money"]:
        step = preceding_step(profile, obs, "credential")
        if step is not None:
            out.append(
                (
                    6.0,
                    Reason(
                        code="credential_then_money",
                        detail=f"{obs.action}{amount} {duration_text(obs.ts - step.ts)} after "
                        f"{step.action}{_since_login(profile, obs)}",
                    ),
                )
            )
    quiet = quietness(profile, obs.hour_of_week)
    if quiet < QUIET_HOUR or SENSITIVITY.get(obs.action, 0.0) < SENSITIVE:
        return out
    over = values["amount_over_max_log"]
    if out:
        what = out[0][1].code.replace("_", " ")
    elif values["first_use_sensitivity"]:
        what = f"first {obs.action}"
    elif over >= TAKEOVER_AMOUNT_OVER:
        what = f"{obs.action} of {math.exp(over):.1f}x the largest amount"
    else:
        return out
    hour = obs.hour_of_week % 24
    out.append(
        (
            8.0,
            Reason(
                code="quiet_hour_takeover",
                detail=f"{what} at {hour:02d}:00 local time, an hour "
                f"{quiet:.0%} below this user's usual activity",
            ),
        )
    )
    return out
