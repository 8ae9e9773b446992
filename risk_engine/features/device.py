"""Device signals: known, similar or new device, attribute drift, time-zone mismatch,
and how long the device has been the user's."""

from __future__ import annotations

from risk_engine.decision import Reason
from risk_engine.features.common import FeatureView, Lesson, Weighted, duration_text, log1p
from risk_engine.features.geo import familiar_place_and_network
from risk_engine.features.observation import Observation
from risk_engine.profiles.model import MAX_DEVICES, BurstCounts, DeviceRecord, Profile

# Drift weights: a browser version bump is mild, a new browser family or OS is strong.
W_FAMILY = 0.40
W_OS = 0.40
W_CLASS = 0.20
W_PLATFORM = 0.15
W_TIMEZONE = 0.15
W_LANGUAGE = 0.10
W_SCREEN = 0.10
W_OS_MAJOR = 0.05
W_MAJOR_BUMP = 0.05
W_MAJOR_JUMP = 0.15
# At most this drift and a device without a matching id is "similar" (a cleared cookie).
SIMILAR_DRIFT = 0.30
# A sensitive action (money, account changes) on a device younger than FRESH_DEVICE_S,
# first seen at least FRESH_DEVICE_AFTER_S after the user was, is worded (and the
# shipped policy steps it up). A customer's devices of the first weeks are their own
# setting in (a laptop beside the phone), not a stranger's.
FRESH_DEVICE_S = 86400.0
FRESH_DEVICE_AFTER_S = 14 * 86400.0
FRESH_DEVICE_SENSITIVITY = 0.5

NAMES: tuple[str, ...] = (
    "device_missing",
    "device_known",
    "device_new",
    "device_similar",
    "device_untrusted",
    "device_drift",
    "tz_mismatch_h",
    "device_novelty",
    "device_age_log_h",
)


def _differs(a: str, b: str) -> bool:
    """Both known and different: an unknown attribute is no evidence of change."""
    return bool(a) and bool(b) and a != b


def drift(record: DeviceRecord, obs: Observation) -> float:
    """How far the event's device is from a known one, in [0, 1]; 0 for identical."""
    ua = obs.ua
    score = 0.0
    if _differs(record.ua_family, ua.family):
        score += W_FAMILY
    elif record.ua_major != ua.major and record.ua_major and ua.major:
        try:
            step = int(ua.major) - int(record.ua_major)
        except ValueError:
            step = 99
        # Browsers update forward one or two majors at a time; a downgrade is odd.
        score += W_MAJOR_BUMP if 0 < step <= 2 else W_MAJOR_JUMP
    if _differs(record.os_family, ua.os_family):
        score += W_OS
    elif _differs(record.os_major, ua.os_major):
        score += W_OS_MAJOR
    if _differs(record.device_class, ua.device_class):
        score += W_CLASS
    if _differs(record.platform, obs.platform):
        score += W_PLATFORM
    if _differs(record.timezone, obs.timezone):
        score += W_TIMEZONE
    if _differs(record.language, obs.language):
        score += W_LANGUAGE
    if _differs(record.screen, obs.screen):
        score += W_SCREEN
    return min(1.0, score)


def match(profile: Profile, obs: Observation) -> tuple[DeviceRecord | None, bool, float]:
    """(record, matched by key, drift): the same device by key, else the most similar one."""
    record = profile.devices.get(obs.device_key)
    if record is not None:
        return record, True, drift(record, obs)
    best: DeviceRecord | None = None
    best_drift = 1.0
    for candidate in profile.devices.values():
        if not candidate.trusted:
            continue
        d = drift(candidate, obs)
        if d < best_drift:
            best, best_drift = candidate, d
    return best, False, best_drift


def device_novelty(profile: Profile) -> float:
    """Distinct trusted devices per trusted event (Witten-Bell): high for cookie clearers."""
    trusted = sum(1 for d in profile.devices.values() if d.trusted)
    if profile.n_events == 0:
        return 1.0
    return trusted / (profile.n_events + trusted)


def compute(profile: Profile, bursts: BurstCounts, obs: Observation) -> tuple[float, ...]:
    missing = not obs.has_device or (not obs.ua.family and not obs.has_device_id)
    record, by_key, d = match(profile, obs)
    known = by_key and record is not None and record.is_trusted(obs.ts)
    untrusted = by_key and record is not None and not known
    similar = not by_key and record is not None and d <= SIMILAR_DRIFT
    new = profile.n_events > 0 and not by_key and not similar
    return (
        1.0 if missing else 0.0,
        1.0 if known else 0.0,
        1.0 if new else 0.0,
        1.0 if similar else 0.0,
        1.0 if untrusted else 0.0,
        d if profile.devices else 0.0,
        # A device clock that differs from the address's zone the way it always did
        # there (a VPN exit, a second home) is the user's habit, not a stranger.
        0.0 if familiar_place_and_network(profile, obs) else min(obs.tz_mismatch_h, 12.0),
        device_novelty(profile),
        device_age_log_h(record if by_key else None, obs),
    )


def device_age_log_h(record: DeviceRecord | None, obs: Observation) -> float:
    """log1p of the hours since the event's own device was first seen (0: first seen now).

    An event that is allowed teaches its device as trusted, so once an attacker's
    login on a look-alike browser passes, the payee added a minute later comes from
    a "known" device; its age still says it is the user's since a minute ago. The
    age does not depend on trust, so training's replay (where an attack teaches
    nothing) and the service see the same value.
    """
    if record is None:
        return 0.0
    return log1p(max(0.0, obs.ts - record.first_ts) / 3600.0)


def learn(profile: Profile, obs: Observation, lesson: Lesson) -> None:
    """A trusted event's device, trusted for a while; a refused event's, as untrusted.

    A device is remembered as untrusted only when its event was refused: an
    unanswered step-up leaves no mark, so "untrusted device" means "seen
    attacking" and a retry finds the profile as the first try did.
    """
    if lesson.trusted:
        _remember(profile, obs, trusted=True, device_trust_s=lesson.device_trust_s)
    elif lesson.refused:
        _remember(profile, obs, trusted=False, device_trust_s=lesson.device_trust_s)


def _remember(profile: Profile, obs: Observation, *, trusted: bool, device_trust_s: float) -> None:
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


def explain(
    profile: Profile, bursts: BurstCounts, obs: Observation, values: FeatureView
) -> list[Weighted]:
    """A new, similar (or look-alike), untrusted or changed device; a clock zone off
    the address's; a money or account action on a fresh device."""
    out: list[Weighted] = []
    label = obs.ua.label
    if values["device_new"]:
        out.append((5.0, Reason(code="new_device", detail=f"never seen before: {label}")))
    elif values["device_similar"]:
        record, _, drift = match(profile, obs)
        known = record.ua_family + " " + record.ua_major if record else "a known device"
        detail = f"device id not recognised, but close to {known.strip()} (drift {drift:.2f})"
        if values["new_network"]:
            # Either half alone is everyday (cookies cleared at home, the user's own
            # laptop at a cafe); together they are a look-alike browser somewhere
            # else: a targeted takeover's login (the shipped policy steps it up).
            out.append(
                (
                    4.5,
                    Reason(code="lookalike_device", detail=detail + ", from a network never seen"),
                )
            )
        else:
            out.append((1.5, Reason(code="similar_device", detail=detail)))
    if values["device_untrusted"]:
        out.append((4.0, Reason(code="untrusted_device", detail=f"{label} never passed a step-up")))
    drift = values["device_drift"]
    if values["device_known"] and drift >= 0.3:
        out.append(
            (
                3.0,
                Reason(
                    code="device_changed", detail=f"known device id, attributes drifted {drift:.2f}"
                ),
            )
        )
    mismatch = values["tz_mismatch_h"]
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
    if values["device_missing"]:
        out.append((1.0, Reason(code="no_device_info", detail="no device id or User-Agent")))
    if (
        values["device_known"]
        and values["action_sensitivity"] >= FRESH_DEVICE_SENSITIVITY
        and profile.n_events > 0
    ):
        # Known means matched by key: the record is there. Only a device that came
        # well after the user (FRESH_DEVICE_AFTER_S) is worded.
        record = profile.devices[obs.device_key]
        age = obs.ts - record.first_ts
        if age < FRESH_DEVICE_S and record.first_ts - profile.created_ts >= FRESH_DEVICE_AFTER_S:
            out.append(
                (
                    3.5,
                    Reason(
                        code="fresh_device",
                        detail=f"{obs.action} on a device first seen {duration_text(age)} ago",
                    ),
                )
            )
    return out
