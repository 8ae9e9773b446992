"""Rotation of the hashing secret: profiles keyed under the previous secret, carried over.

Every keyed id (the user's profile key, the device and address keys inside the
profile) is an HMAC under RISK_ENGINE_SECRET, so a new secret would make every
user a stranger. With RISK_ENGINE_SECRET_PREVIOUS set, an event whose user has
no profile under the new key is looked up under the previous one; a profile
found there is copied to the new key in the event's own transaction, and the
device and address the event names are re-keyed inside it (each further event
re-keys what it names). The window lasts until every active user has been seen
once, and is bounded by the retention: the old copies age out with it.
"""

from __future__ import annotations

import dataclasses

from risk_engine.features.observation import Observation
from risk_engine.profiles.model import Profile

# Profile fields a carried-over copy keeps as they were (the key is the new one).
_CARRIED = tuple(f.name for f in dataclasses.fields(Profile) if f.name != "user_key")


def never_written(profile: Profile) -> bool:
    """Whether ``profile`` is the store's fresh one: no event was ever learned into it."""
    return profile.n_events == 0


def adopt(profile: Profile, previous: Profile) -> None:
    """Make the fresh ``profile`` (under the new key) a copy of the one under the previous key.

    The ref and data key go with it: the audit records sealed for the user still open.
    """
    for name in _CARRIED:
        setattr(profile, name, getattr(previous, name))


def rekey(profile: Profile, old: Observation, new: Observation) -> None:
    """Rename what the event names (its device and address) from the old keys to the new."""
    if old.device_key != new.device_key:
        _rename_device(profile, old.device_key, new.device_key)
    if old.ip_key != new.ip_key and old.ip_key in profile.ips and new.ip_key not in profile.ips:
        profile.ips[new.ip_key] = profile.ips.pop(old.ip_key)
        for session in profile.sessions.values():
            if session.ip_key == old.ip_key:
                session.ip_key = new.ip_key
        for held in profile.pending.values():
            if held.get("ip_key") == old.ip_key:
                held["ip_key"] = new.ip_key


def _rename_device(profile: Profile, old: str, new: str) -> None:
    record = profile.devices.get(old)
    if record is None or new in profile.devices:
        return
    del profile.devices[old]
    record.key = new
    profile.devices[new] = record
    for session in profile.sessions.values():
        if session.device_key == old:
            session.device_key = new
    for held in profile.pending.values():
        if held.get("device_key") == old:
            held["device_key"] = new
    # Challenged actions are keyed "action\x00device key".
    suffix = "\x00" + old
    for key in [k for k in profile.challenged if k.endswith(suffix)]:
        profile.challenged[key[: -len(old)] + new] = profile.challenged.pop(key)
