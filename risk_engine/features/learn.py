"""The learn step: the "learn" half of score-then-learn, family by family.

Run AFTER the features of an event were computed, so that no feature ever sees
its own event. Each feature family learns its part of the event (``learn`` in
its module, through the registry); this module keeps what they share: the
activity counts, the count of trusted events, and the step-ups held pending.
Only trusted events (allowed, or whose step-up passed) teach the profile where
the user is and what the user uses; every event still counts towards velocity
and failures. A device is remembered as untrusted only when its event was
refused (denied, or its step-up failed): an unanswered step-up leaves no mark
(no device, no session), so a retry finds the profile as the first try did.
"""

from __future__ import annotations

from risk_engine.features.common import DEFAULT_DEVICE_TRUST_S, Lesson
from risk_engine.features.observation import Observation
from risk_engine.features.registry import FAMILIES
from risk_engine.profiles.model import MAX_PENDING, MAX_PENDING_AGE_S, Profile, bump


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
    _teach(
        profile,
        obs,
        Lesson(
            seen=True,
            trusted=trusted,
            refused=refused and not trusted,
            device_trust_s=device_trust_s,
        ),
    )


def _teach(profile: Profile, obs: Observation, lesson: Lesson) -> None:
    """The lesson's shared counts, then each family's part of it, in registry order."""
    if lesson.trusted:
        ts = obs.ts
        if profile.n_events == 0:
            profile.created_ts = ts
        profile.n_events += 1
        profile.last_ts = max(profile.last_ts, ts)
    for family in FAMILIES:
        family.learn(profile, obs, lesson)


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
    # Activity was counted when the event was scored; only its lessons remain.
    if passed:
        _teach(
            profile,
            obs,
            Lesson(seen=False, trusted=True, refused=False, device_trust_s=device_trust_s),
        )
        profile.challenged.pop(_challenge_key(obs), None)
    else:
        _teach(
            profile,
            obs,
            Lesson(
                seen=False,
                trusted=False,
                refused=True,
                device_trust_s=device_trust_s,
                failed_at=now,
            ),
        )
    return obs
