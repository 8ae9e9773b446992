"""Session signals: did the address, device or place change inside one session."""

from __future__ import annotations

from risk_engine.decision import Reason
from risk_engine.features.common import (
    FeatureView,
    Lesson,
    Weighted,
    duration_text,
    effective_distance_km,
    km_text,
    log1p,
    speed_kmh,
)
from risk_engine.features.geo import IMPOSSIBLE_KMH, IMPOSSIBLE_MIN_KM
from risk_engine.features.observation import Observation
from risk_engine.profiles.model import MAX_SESSIONS, BurstCounts, Profile, SessionRecord

NAMES: tuple[str, ...] = (
    "session_known",
    "session_ip_changed",
    "session_device_changed",
    "session_speed_log_kmh",
)


def session_of(profile: Profile, obs: Observation) -> SessionRecord | None:
    return profile.sessions.get(obs.session_id) if obs.session_id else None


def session_speed(record: SessionRecord, obs: Observation) -> tuple[float, float]:
    """(effective km, km/h) from the session's last event to this one."""
    if (
        record.latitude is None
        or record.longitude is None
        or obs.latitude is None
        or obs.longitude is None
    ):
        return 0.0, 0.0
    km = effective_distance_km(
        record.latitude,
        record.longitude,
        record.accuracy_km,
        obs.latitude,
        obs.longitude,
        obs.accuracy_km,
    )
    return km, speed_kmh(km, obs.ts - record.ts)


def compute(profile: Profile, bursts: BurstCounts, obs: Observation) -> tuple[float, ...]:
    record = session_of(profile, obs)
    if record is None:
        return (0.0, 0.0, 0.0, 0.0)
    if record.network != obs.network:
        ip_changed = 1.0
    elif record.ip_key != obs.ip_key:
        ip_changed = 0.5
    else:
        ip_changed = 0.0
    _, kmh = session_speed(record, obs)
    return (
        1.0,
        ip_changed,
        1.0 if record.device_key != obs.device_key else 0.0,
        log1p(kmh),
    )


def learn(profile: Profile, obs: Observation, lesson: Lesson) -> None:
    """A trusted event moves its session's last event here (opening it if new).

    A pending step-up leaves its session as it was: a retry must not find the
    session continued from the challenged place and device, which would make it
    look familiar.
    """
    if not lesson.trusted or not obs.session_id:
        return
    sessions = profile.sessions
    record = sessions.get(obs.session_id)
    if record is None:
        if len(sessions) >= MAX_SESSIONS:
            oldest = min(sessions, key=lambda k: sessions[k].ts)
            del sessions[oldest]
        record = SessionRecord(obs.ts, obs.ip_key, obs.network, obs.device_key, obs.country)
        record.start_ts = obs.ts
        sessions[obs.session_id] = record
    # The session keeps the assurance its step-up earned (acr, auth_time) as long as
    # it stays consistent: the engine checks that.
    record.ts = obs.ts
    record.ip_key = obs.ip_key
    record.network = obs.network
    record.device_key = obs.device_key
    record.country = obs.country
    record.latitude = obs.latitude
    record.longitude = obs.longitude
    record.accuracy_km = obs.accuracy_km
    record.place = obs.place


def explain(
    profile: Profile, bursts: BurstCounts, obs: Observation, values: FeatureView
) -> list[Weighted]:
    """A session that moved impossibly fast, or changed its network or device."""
    record = session_of(profile, obs)
    if record is None:
        return []
    out: list[Weighted] = []
    km, kmh = session_speed(record, obs)
    if km > IMPOSSIBLE_MIN_KM and kmh > IMPOSSIBLE_KMH:
        out.append(
            (
                12.0,
                Reason(
                    code="session_hijack",
                    detail=f"session moved {km_text(km)} from {record.place or 'its start'} in "
                    f"{duration_text(obs.ts - record.ts)} ({kmh:,.0f} km/h)",
                ),
            )
        )
    elif values["session_ip_changed"] >= 1.0:
        out.append((3.0, Reason(code="session_ip_changed", detail="network changed mid-session")))
    if values["session_device_changed"]:
        out.append(
            (4.0, Reason(code="session_device_changed", detail="device changed mid-session"))
        )
    return out
