"""The profile update: the "learn" half of score-then-learn.

Run AFTER the features of an event were computed, so that no feature ever sees
its own event. Only trusted events (allowed, or whose step-up passed) teach the
profile where the user is and what the user uses; every event still counts
towards velocity and failures. A device is remembered
as untrusted only when its event was refused (denied, or its step-up failed): an
unanswered step-up leaves no mark (no device, no session), so "untrusted device"
means "seen attacking" and a retry finds the profile as the first try did.
"""

from __future__ import annotations

import math

from risk_engine.features.observation import Observation
from risk_engine.profiles.model import (
    HOUR_MASS_CAP,
    MAX_ACTIONS,
    MAX_AMOUNTS,
    MAX_CITIES,
    MAX_COUNTRIES,
    MAX_DEVICES,
    MAX_FAILURES,
    MAX_FAMILIES,
    MAX_IPS,
    MAX_NETWORKS,
    MAX_PAYEES,
    MAX_PENDING,
    MAX_PENDING_AGE_S,
    MAX_PLACES,
    MAX_RECENT,
    MAX_SESSIONS,
    MAX_STEPS,
    DeviceRecord,
    Place,
    Profile,
    SessionRecord,
    Step,
    bump,
    push_bounded,
)

# How long a device stays trusted after its last trusted use.
DEFAULT_DEVICE_TRUST_S = 90 * 86400.0
# The steps that open a way to money or control, by action: a sequence signal
# looks for a money action shortly after one (features/sequence.py).
STEP_KINDS: dict[str, str] = {
    "add_payee": "payee",
    "change_password": "credential",
    "change_email": "credential",
    "change_mfa": "credential",
}


def learn(
    profile: Profile,
    obs: Observation,
    *,
    trusted: bool,
    refused: bool = True,
    device_trust_s: float = DEFAULT_DEVICE_TRUST_S,
) -> None:
    """Fold one observation into the profile; only a trusted one teaches places and devices.

    ``refused`` (for untrusted events): the event was denied or failed its step-up,
    so its device is kept as an untrusted one; False for a step-up still pending.
    """
    ts = obs.ts
    profile.n_seen += 1
    profile.last_seen_ts = max(profile.last_seen_ts, ts)
    if profile.pending or profile.challenged:
        _forget_stale_pending(profile, ts)
    push_bounded(profile.recent, ts, MAX_RECENT)
    note_step(profile, obs)
    if obs.action == "login" and not obs.success:
        push_bounded(profile.failures, ts, MAX_FAILURES)
    if trusted:
        teach(profile, obs, device_trust_s=device_trust_s)
    elif refused:
        _remember_device(profile, obs, trusted=False, device_trust_s=device_trust_s)
    # A pending step-up leaves its session as it was: a retry must not find the session
    # continued from the challenged place and device, which would make it look familiar.


def teach(
    profile: Profile, obs: Observation, *, device_trust_s: float = DEFAULT_DEVICE_TRUST_S
) -> None:
    """Learn a trusted observation: its device, place, hour, networks, action and amount."""
    ts = obs.ts
    _remember_device(profile, obs, trusted=True, device_trust_s=device_trust_s)
    if profile.n_events == 0:
        profile.created_ts = ts
    profile.n_events += 1
    profile.last_ts = max(profile.last_ts, ts)
    if obs.geo_known and obs.latitude is not None and obs.longitude is not None:
        push_bounded(
            profile.places,
            Place(ts, obs.latitude, obs.longitude, obs.accuracy_km, obs.country, obs.city),
            MAX_PLACES,
        )
    _learn_hour(profile, obs.hour_of_week)
    if obs.country:
        bump(profile.countries, obs.country, ts, MAX_COUNTRIES)
    if obs.city_key:
        bump(profile.cities, obs.city_key, ts, MAX_CITIES)
    bump(profile.networks, obs.network, ts, MAX_NETWORKS)
    if obs.network_family:
        bump(profile.families, obs.network_family, ts, MAX_FAMILIES)
    bump(profile.ips, obs.ip_key, ts, MAX_IPS)
    bump(profile.actions, obs.action, ts, MAX_ACTIONS)
    if obs.amount is not None:
        push_bounded(profile.amounts, math.log1p(obs.amount), MAX_AMOUNTS)
    if obs.payee_key and obs.action == "transfer":
        # A payee becomes familiar by being paid, not by being added.
        bump(profile.payees, obs.payee_key, ts, MAX_PAYEES)
    if obs.session_id:
        _remember_session(profile, obs)


def note_step(profile: Profile, obs: Observation) -> None:
    """Remember an event that opens a way to money or control, whatever its decision.

    Like failures, steps only ever add suspicion to what follows them, so even a
    refused or pending one is kept: a transfer right after a denied payee is no
    less telling.
    """
    kind = STEP_KINDS.get(obs.action)
    if kind is not None:
        step = Step(obs.ts, kind, obs.action, obs.session_id, obs.payee_key)
        push_bounded(profile.steps, step, MAX_STEPS)


def _learn_hour(profile: Profile, hour_of_week: int) -> None:
    hours = profile.hours
    hours[hour_of_week] += 1.0
    if sum(hours) > HOUR_MASS_CAP:
        profile.hours = [h * 0.5 for h in hours]


def _remember_device(
    profile: Profile, obs: Observation, *, trusted: bool, device_trust_s: float
) -> None:
    if not obs.has_device:
        return
    ua = obs.ua
    record = profile.devices.get(obs.device_key)
    if record is None:
        if len(profile.devices) >= MAX_DEVICES:
            # Evict untrusted devices first, then the least recently used trusted one;
            # but an attacker's device never pushes out a device the user trusts.
            victim = min(profile.devices.values(), key=lambda d: (d.trusted, d.last_ts))
            if victim.trusted and not trusted:
                return
            del profile.devices[victim.key]
        record = DeviceRecord(key=obs.device_key, has_id=obs.has_device_id, first_ts=obs.ts)
        profile.devices[obs.device_key] = record
    # Attributes follow the device (browser updates) only when the event is trusted.
    if trusted or record.count == 0:
        record.ua_family = ua.family
        record.ua_major = ua.major
        record.os_family = ua.os_family
        record.os_major = ua.os_major
        record.device_class = ua.device_class
        record.platform = obs.platform
        record.timezone = obs.timezone
        record.language = obs.language
        record.screen = obs.screen
    record.count += 1
    record.last_ts = max(record.last_ts, obs.ts)
    if trusted:
        record.trusted = True
        record.trusted_until = obs.ts + device_trust_s


def _remember_session(profile: Profile, obs: Observation) -> None:
    assert obs.session_id is not None
    sessions = profile.sessions
    record = sessions.get(obs.session_id)
    if record is None:
        if len(sessions) >= MAX_SESSIONS:
            oldest = min(sessions, key=lambda k: sessions[k].ts)
            del sessions[oldest]
        record = SessionRecord(obs.ts, obs.ip_key, obs.network, obs.device_key, obs.country)
        record.start_ts = obs.ts
        sessions[obs.session_id] = record
    # The session's last event moves here. It keeps the assurance its step-up earned
    # (acr, auth_time) as long as it stays consistent: the engine checks that.
    record.ts = obs.ts
    record.ip_key = obs.ip_key
    record.network = obs.network
    record.device_key = obs.device_key
    record.country = obs.country
    record.latitude = obs.latitude
    record.longitude = obs.longitude
    record.accuracy_km = obs.accuracy_km
    record.place = obs.place


def _forget_stale_pending(profile: Profile, now: float) -> None:
    pending = profile.pending
    horizon = now - MAX_PENDING_AGE_S
    stale = [event_id for event_id, held in pending.items() if float(held["ts"]) < horizon]
    for event_id in stale:
        del pending[event_id]
    challenged = profile.challenged
    for key in [key for key, (_, ts) in challenged.items() if ts < horizon]:
        del challenged[key]


def _challenge_key(obs: Observation) -> str:
    return f"{obs.action}\x00{obs.device_key}"


def hold_pending(profile: Profile, obs: Observation, challenge_id: str | None = None) -> None:
    """Keep an observation whose step-up is outstanding, to learn it if the step-up passes.

    The action is also remembered as challenged on this device until a step-up for it
    passes there: failed or never answered, it is challenged again when retried.
    ``challenge_id`` names the step-up's challenge, so that erasing the user finds it.
    """
    pending = profile.pending
    if len(pending) >= MAX_PENDING:
        oldest = min(pending, key=lambda k: float(pending[k]["ts"]))
        del pending[oldest]
    held = obs.to_dict()
    if challenge_id is not None:
        held["challenge_id"] = challenge_id
    pending[obs.event_id] = held
    bump(profile.challenged, _challenge_key(obs), obs.ts, MAX_PENDING)


def unpassed_step_up(profile: Profile, obs: Observation) -> float | None:
    """When this action was last stepped up on this device without a pass, if recently."""
    entry = profile.challenged.get(_challenge_key(obs))
    if entry is None or obs.ts - entry[1] > MAX_PENDING_AGE_S:
        return None
    return entry[1]


def resolve_pending(
    profile: Profile,
    event_id: str,
    *,
    passed: bool,
    now: float,
    device_trust_s: float = DEFAULT_DEVICE_TRUST_S,
) -> Observation | None:
    """Apply a step-up outcome: a pass teaches the held observation, a failure counts as one.

    Returns the observation that was pending, or None if none was held for ``event_id``.
    """
    data = profile.pending.pop(event_id, None)
    if data is None:
        return None
    data.pop("challenge_id", None)
    obs = Observation.from_dict(data)
    if passed:
        # Activity was counted when the event was scored; only its lessons remain.
        teach(profile, obs, device_trust_s=device_trust_s)
        profile.challenged.pop(_challenge_key(obs), None)
    else:
        push_bounded(profile.failures, now, MAX_FAILURES)
        _remember_device(profile, obs, trusted=False, device_trust_s=device_trust_s)
    return obs
