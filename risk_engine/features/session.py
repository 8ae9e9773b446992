"""Session signals: did the address, device or place change inside one session."""

from __future__ import annotations

from risk_engine.features.common import effective_distance_km, log1p, speed_kmh
from risk_engine.features.observation import Observation
from risk_engine.profiles.model import BurstCounts, Profile, SessionRecord

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
