"""Action signals: how sensitive the action is, how usual for the user, amount deviation."""

from __future__ import annotations

import math
import statistics

from risk_engine.features.common import familiarity, log1p
from risk_engine.features.observation import Observation
from risk_engine.profiles.model import BurstCounts, Profile

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
# A floor on the spread of log amounts: a user who always pays 20 is not alarmed by 25.
MIN_MAD = 0.25
MIN_AMOUNTS = 3
Z_CAP = 10.0

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


def compute(profile: Profile, bursts: BurstCounts, obs: Observation) -> tuple[float, ...]:
    return (
        SENSITIVITY.get(obs.action, DEFAULT_SENSITIVITY),
        familiarity(profile.actions, obs.action),
        1.0 if obs.action in ACCOUNT_CHANGES else 0.0,
        log1p(obs.amount) if obs.amount is not None else 0.0,
        amount_z(profile.amounts, obs.amount),
    )
