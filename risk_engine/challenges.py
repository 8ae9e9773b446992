"""Step-up challenges: issue one bound to its event, complete it once, cover what follows.

A step-up decision holds its event in the profile (``features/learn.py``) and
issues a challenge: a record, apart from the profile, of what it is bound to (the
user and session by their keyed hashes, the action by its digest), its required
assurance and its expiry. The application reports the result once; a pass teaches
the held event and raises the assurance where it was passed (its session, else
its device and network), which then covers the actions that follow there
(``use_assurance``) for the class's ``max_age``, or, with dynamic linking, only the
action it was passed for, once.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from risk_engine.decision import Acr, Challenge, Decision, Reason
from risk_engine.errors import ConflictError, NotFoundError
from risk_engine.events import Event
from risk_engine.features.learn import resolve_pending
from risk_engine.features.observation import Observation
from risk_engine.policy import ClassPolicy
from risk_engine.privacy import Hasher
from risk_engine.profiles.model import DeviceRecord, Profile, SessionRecord
from risk_engine.profiles.store import ProfileStore

# Tolerated difference between the application's event clock and ours, in seconds.
CLOCK_SKEW_S = 60.0
# Reasons after which no earlier step-up covers the action: the session or device
# is no longer the one that passed it.
BREAKS_ASSURANCE = frozenset({"session_hijack", "impossible_travel", "session_device_changed"})


@dataclass(frozen=True)
class ChallengeResult:
    """The effect of a reported step-up result."""

    challenge_id: str
    event_id: str
    user_key: str
    session_id: str | None
    passed: bool
    satisfied: bool
    acr: Acr | None
    # The user's ref and data key, to seal the audit record of the result.
    sealing: tuple[str, str] | None = None


def new_id() -> str:
    """A challenge's id: unguessable, as it names the step-up a result is reported for."""
    return "c-" + secrets.token_urlsafe(16)


def action_digest(event: Event | Observation) -> str:
    """What a challenge is bound to: the action, its amount, currency and payee."""
    parts = f"{event.action}\x00{event.amount!r}\x00{event.currency or ''}\x00{event.payee or ''}"
    return hashlib.sha256(parts.encode()).hexdigest()[:32]


def session_hash(hasher: Hasher, session_id: str | None) -> str | None:
    """The keyed hash that challenge records keep of a session id."""
    return None if session_id is None else hasher.digest("session", session_id)


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- a pass covers what follows -----------------------------------------------------------


def use_assurance(
    profile: Profile, obs: Observation, reasons: list[Reason], cls: ClassPolicy
) -> Reason | None:
    """The reason a passed step-up covers this action, or None; uses up a linked one.

    A step-up covers what comes next where it was passed: in the same, unchanged
    session (same device and network); passed without a session, on the same
    device and network, for events without a session. In a class with dynamic
    linking it covers only the action it was passed for, once.
    """
    record: SessionRecord | DeviceRecord | None
    network: str | None
    if obs.session_id:
        record = profile.sessions.get(obs.session_id)
        # A hijacked session must not inherit the victim's assurance.
        if record is None or record.device_key != obs.device_key:
            return None
        network, where = record.network, "in this session"
    else:
        record = profile.devices.get(obs.device_key) if obs.has_device else None
        if record is None:
            return None
        network, where = record.auth_network, "on this device and network"
    if record.acr is None or record.auth_time is None or network != obs.network:
        return None
    if any(r.code in BREAKS_ASSURANCE for r in reasons):
        return None
    age = obs.ts - record.auth_time
    # The step-up is stamped by the server clock, the event by the application's:
    # allow a little skew, but an action from before the step-up is not covered.
    if Acr(record.acr).rank < cls.required_acr.rank or not -CLOCK_SKEW_S <= age <= cls.max_age:
        return None
    if cls.dynamic_linking:
        if record.action_digest != action_digest(obs):
            return None
        record.action_digest = None
    age = max(age, 0.0)
    return Reason(
        code="session_assurance",
        detail=f"{record.acr} step-up passed {where} {age / 60:.0f} min ago",
    )


def grant_assurance(profile: Profile, obs: Observation, acr: Acr, now: float, digest: str) -> None:
    """Raise the assurance of where a step-up was passed: its session, else its device."""
    record: SessionRecord | DeviceRecord | None
    if obs.session_id:
        record = profile.sessions.get(obs.session_id)
    else:
        record = profile.devices.get(obs.device_key) if obs.has_device else None
    if record is None:
        return
    if record.acr is None or Acr(record.acr).rank <= acr.rank:
        record.acr = acr.value
    record.auth_time = now
    record.action_digest = digest
    if isinstance(record, DeviceRecord):
        record.auth_network = obs.network


# -- the challenge record -----------------------------------------------------------------


def issue(
    store: ProfileStore,
    event: Event,
    obs: Observation,
    decision: Decision,
    challenge_id: str | None,
    *,
    hasher: Hasher,
    ttl_s: float,
    now: float,
) -> Challenge:
    """Save the challenge of a step-up decision, bound to its event; what the client gets."""
    assert decision.required_acr is not None and decision.max_age is not None
    challenge_id = challenge_id or new_id()
    expires = now + ttl_s
    # Keyed ids only: the record outlives nothing (erasure deletes it) but is kept
    # apart from the profile, so it names the user and the session by their HMACs.
    record = {
        "event_id": event.event_id,
        "user_key": obs.user_key,
        "session_hash": session_hash(hasher, event.session_id),
        "action_digest": action_digest(event),
        "required_acr": decision.required_acr.value,
        "max_age": decision.max_age,
        "expires_at": expires,
        "decision_id": decision.decision_id,
    }
    store.save_challenge(challenge_id, orjson.dumps(record), ttl_s, now)
    hint = (
        'Bearer error="insufficient_user_authentication", '
        f'error_description="step-up required", acr_values="{decision.required_acr.value}", '
        f"max_age={decision.max_age}"
    )
    return Challenge(
        id=challenge_id,
        expires_at=_rfc3339(expires),
        required_acr=decision.required_acr,
        max_age=decision.max_age,
        www_authenticate=hint,
    )


def apply_outcome(
    store: ProfileStore,
    user_key: str,
    event_id: str,
    *,
    passed: bool,
    now: float,
    device_trust_s: float,
    acr: Acr | None = None,
    digest: str | None = None,
) -> tuple[bool | None, tuple[str, str] | None]:
    """Apply a step-up outcome to the held event: (applied, the profile's ref and data key).

    A pass with ``acr`` raises the assurance where the held event happened (its
    session, else its device and network), for the action ``digest`` names (the
    challenge's; by default the held event's own). False when nothing was held for
    the event; (None, None) when no profile is kept (erased, or never made): none
    is created.
    """
    sealing: list[tuple[str, str]] = []

    def apply(profile: Profile) -> bool:
        if profile.is_new:
            raise _NoProfile
        sealing[:] = [(profile.ref, profile.data_key)]
        obs = resolve_pending(
            profile, event_id, passed=passed, now=now, device_trust_s=device_trust_s
        )
        if obs is None:
            return False
        if passed and acr is not None:
            grant_assurance(profile, obs, acr, now, digest or action_digest(obs))
        return True

    try:
        applied = store.update(user_key, apply)
    except _NoProfile:
        return None, None
    return applied, sealing[0]


def complete(
    store: ProfileStore,
    challenge_id: str,
    *,
    passed: bool,
    session_id: str | None,
    acr: Acr | None,
    now: float,
    hashers: tuple[Hasher, ...],
    device_trust_s: float,
) -> ChallengeResult:
    """Record a step-up result reported by the application; single use, session-bound.

    ``hashers``: the secret's, then (during a rotation) the previous secret's, which
    keyed the challenges issued before it. A challenge issued without a session
    takes a result without one: its held event's device and network are what its
    assurance is bound to.
    """
    raw = store.load_challenge(challenge_id, now)
    if raw is None:
        raise NotFoundError(f"challenge {challenge_id} is unknown or expired", field="id")
    record = orjson.loads(raw)
    if "user_key" not in record:
        # Saved by an engine from before challenges kept keyed ids (a rolling upgrade).
        record["user_key"] = hashers[0].digest("user", record["user_id"])
        record["session_hash"] = session_hash(hashers[0], record.get("session_id"))
    bound = record.get("session_hash")
    if bound is None and session_id is not None:
        raise ConflictError(
            "challenge was issued without a session: its result must name none",
            field="session_id",
        )
    if bound is not None and bound not in {session_hash(h, session_id) for h in hashers}:
        raise ConflictError(
            "challenge result is for another session than the challenge", field="session_id"
        )
    if not store.claim_challenge(challenge_id, now):
        raise ConflictError(f"challenge {challenge_id} was already used", field="id")
    required = Acr(record["required_acr"])
    satisfied = passed and (acr is None or acr.rank >= required.rank)
    # The held event's own session is the bound one (the pending entry keeps it).
    applied, sealing = apply_outcome(
        store,
        record["user_key"],
        record["event_id"],
        passed=satisfied,
        now=now,
        device_trust_s=device_trust_s,
        acr=(acr or required) if satisfied else None,
        digest=record["action_digest"],
    )
    if applied is None:
        raise NotFoundError(
            f"challenge {challenge_id} is for a user no longer kept (erased)", field="id"
        )
    return ChallengeResult(
        challenge_id=challenge_id,
        event_id=record["event_id"],
        user_key=record["user_key"],
        session_id=session_id if bound is not None else None,
        passed=passed,
        satisfied=satisfied,
        acr=acr,
        sealing=sealing,
    )


def carry(store: ProfileStore, profile: Profile, old_key: str, new_key: str, now: float) -> None:
    """Point a profile's outstanding challenges at its new key (a secret rotation)."""
    for challenge_id in profile.challenge_ids():
        raw = store.load_challenge(challenge_id, now)
        if raw is None:
            continue
        record = orjson.loads(raw)
        if record.get("user_key") != old_key:
            continue
        record["user_key"] = new_key
        ttl = float(record["expires_at"]) - now
        if ttl > 0:
            store.save_challenge(challenge_id, orjson.dumps(record), ttl, now)


class _NoProfile(Exception):
    """Raised inside an outcome's update to leave a missing profile missing."""
