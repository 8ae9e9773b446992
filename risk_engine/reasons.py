"""Human reasons: which signals drove a decision, with the numbers behind them.

Computed from the feature vector and the profile as it was BEFORE the event was
learned, so "new device" means new before this event. Each reason has a stable
code and a weight that orders them, most important first.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from risk_engine.decision import Reason
from risk_engine.features import crowd as crowd_features
from risk_engine.features import device as device_features
from risk_engine.features import geo as geo_features
from risk_engine.features import sequence as sequence_features
from risk_engine.features import session as session_features
from risk_engine.features import velocity as velocity_features
from risk_engine.features.action import SENSITIVITY
from risk_engine.features.observation import Observation
from risk_engine.features.registry import FEATURE_INDEX
from risk_engine.profiles.model import BurstCounts, Profile

Weighted = tuple[float, Reason]

# A sensitive action at an hour this far below the user's flat day is a quiet-hour action.
QUIET_HOUR = 0.6
# An amount this many times (in log) the largest the user moved is a takeover's at quiet hours.
TAKEOVER_AMOUNT_OVER = math.log(2.0)
# The action sensitivity from which an hour or a first use is worth a reason of its own.
SENSITIVE = 0.5


def _f(values: list[float], name: str) -> float:
    return values[FEATURE_INDEX[name]]


def _km(value: float) -> str:
    return f"{value:,.0f} km"


def _duration(seconds: float) -> str:
    minutes = seconds / 60.0
    if minutes < 90:
        return f"{max(1, round(minutes))} min"
    hours = minutes / 60.0
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.0f} days"


def _travel(profile: Profile, obs: Observation, values: list[float]) -> list[Weighted]:
    km, seconds, kmh = geo_features.travel(profile, obs)
    if km <= 0 or not profile.places:
        return []
    origin = profile.places[-1]
    where = f"{origin.city}, {origin.country}" if origin.city else origin.country or "last place"
    detail = f"{_km(km)} from {where} in {_duration(seconds)} ({kmh:,.0f} km/h)"
    if _f(values, "impossible_travel"):
        return [(10.0, Reason(code="impossible_travel", detail=detail))]
    if km > 500:
        return [(3.0, Reason(code="long_distance", detail=detail))]
    return []


def _places(profile: Profile, obs: Observation, values: list[float]) -> list[Weighted]:
    out: list[Weighted] = []
    if _f(values, "geo_unknown"):
        out.append((1.0, Reason(code="unknown_location", detail="the address cannot be located")))
    if _f(values, "new_country"):
        usual = ", ".join(sorted(profile.countries, key=lambda c: -profile.countries[c][0])[:3])
        out.append(
            (
                6.0,
                Reason(code="new_country", detail=f"first time from {obs.country}; usual: {usual}"),
            )
        )
    elif _f(values, "new_city"):
        out.append((2.5, Reason(code="new_city", detail=f"first time from {obs.place}")))
    if _f(values, "new_network"):
        known = len(profile.families) or len(profile.networks)
        out.append(
            (
                2.0,
                Reason(
                    code="new_network",
                    detail=f"first time from network {obs.network} "
                    f"({known} network families known)",
                ),
            )
        )
    if _f(values, "anonymous_ip"):
        out.append((5.0, Reason(code="anonymous_ip", detail="VPN, proxy or Tor exit address")))
    return out


def _device(profile: Profile, obs: Observation, values: list[float]) -> list[Weighted]:
    out: list[Weighted] = []
    label = obs.ua.label
    if _f(values, "device_new"):
        out.append((5.0, Reason(code="new_device", detail=f"never seen before: {label}")))
    elif _f(values, "device_similar"):
        record, _, drift = device_features.match(profile, obs)
        known = record.ua_family + " " + record.ua_major if record else "a known device"
        out.append(
            (
                1.5,
                Reason(
                    code="similar_device",
                    detail=f"device id not recognised, but close to {known.strip()} "
                    f"(drift {drift:.2f})",
                ),
            )
        )
    if _f(values, "device_untrusted"):
        out.append((4.0, Reason(code="untrusted_device", detail=f"{label} never passed a step-up")))
    drift = _f(values, "device_drift")
    if _f(values, "device_known") and drift >= 0.3:
        out.append(
            (
                3.0,
                Reason(
                    code="device_changed", detail=f"known device id, attributes drifted {drift:.2f}"
                ),
            )
        )
    mismatch = _f(values, "tz_mismatch_h")
    if mismatch >= 2:
        out.append(
            (
                3.0,
                Reason(
                    code="timezone_mismatch",
                    detail=f"device time zone {obs.timezone or '?'} is {mismatch:.0f} h off "
                    f"the address's {obs.geo_timezone or '?'}",
                ),
            )
        )
    if _f(values, "device_missing"):
        out.append((1.0, Reason(code="no_device_info", detail="no device id or User-Agent")))
    return out


def _time(profile: Profile, obs: Observation, values: list[float]) -> list[Weighted]:
    out: list[Weighted] = []
    sensitivity = SENSITIVITY.get(obs.action, 0.0)
    quiet = sequence_features.quietness(profile, obs.hour_of_week)
    if sensitivity >= SENSITIVE and quiet >= QUIET_HOUR:
        hour = obs.hour_of_week % 24
        out.append(
            (
                3.0,
                Reason(
                    code="quiet_hour_action",
                    detail=f"{obs.action} at {hour:02d}:00 local time, an hour with "
                    f"{_f(values, 'hour_of_day_familiarity') / 24.0:.1%} of this user's "
                    f"activity in {profile.n_events} events",
                ),
            )
        )
    elif profile.n_events >= 10 and _f(values, "hour_of_day_familiarity") < 0.25:
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
    gap_days = math.expm1(_f(values, "gap_log_days"))
    if gap_days >= 60:
        out.append(
            (1.5, Reason(code="dormant_account", detail=f"first activity in {gap_days:.0f} days"))
        )
    return out


def _action(profile: Profile, obs: Observation, values: list[float]) -> list[Weighted]:
    out: list[Weighted] = []
    z = _f(values, "amount_z")
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
    over = _f(values, "amount_over_max_log")
    if over >= math.log(1.5) and obs.amount is not None:
        largest = math.expm1(max(profile.amounts))
        out.append(
            (
                4.0,
                Reason(
                    code="amount_above_history",
                    detail=f"amount {obs.amount:,.2f} is {math.exp(over):.1f}x the largest of "
                    f"the last {len(profile.amounts)} amounts ({largest:,.2f})",
                ),
            )
        )
    if _f(values, "new_payee"):
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
    if _f(values, "first_use_sensitivity"):
        out.append(
            (
                3.0,
                Reason(
                    code="first_use",
                    detail=f"first {obs.action} in {profile.n_events} events of this user",
                ),
            )
        )
        if sequence_features.first_privileged_use(profile, obs):
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
    elif _f(values, "account_change") and _f(values, "action_familiarity") == 0.0:
        out.append(
            (2.0, Reason(code="sensitive_action", detail=f"first {obs.action} for this user"))
        )
    return out


def _since_login(profile: Profile, obs: Observation) -> str:
    record = session_features.session_of(profile, obs)
    if record is None or record.start_ts is None:
        return ""
    return f", {_duration(obs.ts - record.start_ts)} into the session"


def _sequence(profile: Profile, obs: Observation, values: list[float]) -> list[Weighted]:
    out: list[Weighted] = []
    amount = f" of {obs.amount:,.2f}" if obs.amount is not None else ""
    if _f(values, "payee_then_transfer"):
        step = sequence_features.preceding_step(profile, obs, "payee")
        if step is not None:
            which = "that payee" if step.payee and obs.payee_key else "a payee"
            out.append(
                (
                    6.0,
                    Reason(
                        code="payee_then_transfer",
                        detail=f"{obs.action}{amount} to {which} added "
                        f"{_duration(obs.ts - step.ts)} before{_since_login(profile, obs)}",
                    ),
                )
            )
    if _f(values, "credential_then_money"):
        step = sequence_features.preceding_step(profile, obs, "credential")
        if step is not None:
            out.append(
                (
                    6.0,
                    Reason(
                        code="credential_then_money",
                        detail=f"{obs.action}{amount} {_duration(obs.ts - step.ts)} after "
                        f"{step.action}{_since_login(profile, obs)}",
                    ),
                )
            )
    quiet = sequence_features.quietness(profile, obs.hour_of_week)
    if quiet < QUIET_HOUR or SENSITIVITY.get(obs.action, 0.0) < SENSITIVE:
        return out
    over = _f(values, "amount_over_max_log")
    if out:
        what = out[0][1].code.replace("_", " ")
    elif _f(values, "first_use_sensitivity"):
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


def _session(profile: Profile, obs: Observation, values: list[float]) -> list[Weighted]:
    record = session_features.session_of(profile, obs)
    if record is None:
        return []
    out: list[Weighted] = []
    km, kmh = session_features.session_speed(record, obs)
    if km > geo_features.IMPOSSIBLE_MIN_KM and kmh > geo_features.IMPOSSIBLE_KMH:
        out.append(
            (
                12.0,
                Reason(
                    code="session_hijack",
                    detail=f"session moved {_km(km)} from {record.place or 'its start'} in "
                    f"{_duration(obs.ts - record.ts)} ({kmh:,.0f} km/h)",
                ),
            )
        )
    elif _f(values, "session_ip_changed") >= 1.0:
        out.append((3.0, Reason(code="session_ip_changed", detail="network changed mid-session")))
    if _f(values, "session_device_changed"):
        out.append(
            (4.0, Reason(code="session_device_changed", detail="device changed mid-session"))
        )
    return out


def _bursts(
    profile: Profile, bursts: BurstCounts, obs: Observation, values: list[float]
) -> list[Weighted]:
    out: list[Weighted] = []
    failures = round(math.expm1(_f(values, "user_failures_1h")))
    if failures >= 3:
        out.append(
            (3.0, Reason(code="failed_logins", detail=f"{failures} failed logins in the last hour"))
        )
    # A network the user trusts, or a crowd's, is shared by many by nature (an office,
    # a carrier).
    shared = velocity_features.shared_network(profile, bursts, obs)
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


Explainer = Callable[[Profile, Observation, list[float]], list[Weighted]]
_EXPLAINERS: tuple[Explainer, ...] = (
    _travel,
    _places,
    _device,
    _time,
    _action,
    _session,
    _sequence,
)


def explain(
    profile: Profile, bursts: BurstCounts, obs: Observation, values: list[float]
) -> list[Reason]:
    """The reasons for one scored event, most important first."""
    weighted: list[Weighted] = []
    for explainer in _EXPLAINERS:
        weighted.extend(explainer(profile, obs, values))
    weighted.extend(_bursts(profile, bursts, obs, values))
    weighted.extend(crowd_features.explain(profile, bursts, obs))
    if profile.n_events == 0:
        weighted.append((0.5, Reason(code="new_user", detail="no history for this user yet")))
    weighted.sort(key=lambda item: -item[0])
    return [reason for _, reason in weighted]
