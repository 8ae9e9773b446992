"""The compact binary form of a profile (version 2): what the stores keep.

A version byte, a byte naming the compression, then one msgpack array with the
profile's fields by position (``pack`` gives the order), records as flat runs of
their fields, never a field name. Values are written as they are (float64 stays
float64), so a profile read back is equal to the one written, float for float.
Raw deflate (level 1, a 16 KiB window) then takes out what repeats: countries,
networks and device keys met in several collections, and hashed keys written in
hex. It is kept only when it is smaller; the record's CRC32 (profiles.integrity)
covers both forms. The window is the writer's choice alone: raw deflate is read
the same whatever window wrote it, so records written with zlib's default 32 KiB
window read as before.
"""

from __future__ import annotations

import zlib
from typing import Any

import msgpack

from risk_engine.profiles.model import DeviceRecord, Place, Profile, SessionRecord, Step

BINARY_VERSION = 2
_PLAIN = 0
_DEFLATE = 1
# Level 1: nearly the size of level 6 at a fraction of its time, on every write.
_LEVEL = 1
# A 16 KiB window and a smaller hash table than zlib's defaults (32 KiB, memLevel 8):
# a profile's body is a few KiB (some 20 at the caps), so the defaults' larger state,
# set up afresh on every write, costs time for next to no size (README, "Performance
# and sizing"); an 8 KiB window lost repeats of the profiles at the caps.
_WBITS = -14
_MEM_LEVEL = 7
_PLACE = 6
_DEVICE = 21
_SESSION = 14
_STEP = 5


def pack(profile: Profile) -> bytes:
    """The version byte, the compression byte, and the profile's fields by position."""
    places = [
        v
        for p in profile.places
        for v in (p.ts, p.latitude, p.longitude, p.accuracy_km, p.country, p.city)
    ]
    devices: list[Any] = []
    for key, d in profile.devices.items():
        devices += (key, d.key, d.has_id, d.ua_family, d.ua_major, d.os_family, d.os_major)
        devices += (d.device_class, d.platform, d.timezone, d.language, d.screen, d.first_ts)
        devices += (d.last_ts, d.count, d.trusted, d.trusted_until, d.acr, d.auth_time)
        devices += (d.auth_network, d.action_digest)
    sessions: list[Any] = []
    for sid, r in profile.sessions.items():
        sessions += (sid, r.ts, r.ip_key, r.network, r.device_key, r.country, r.latitude)
        sessions += (r.longitude, r.accuracy_km, r.place, r.acr, r.auth_time, r.action_digest)
        sessions.append(r.start_ts)
    steps = [v for s in profile.steps for v in (s.ts, s.kind, s.action, s.session_id, s.payee)]
    fields = [
        profile.user_key,
        profile.created_ts,
        profile.last_ts,
        profile.last_seen_ts,
        profile.n_events,
        profile.n_seen,
        places,
        devices,
        profile.hours,
        profile.countries,
        profile.cities,
        profile.networks,
        profile.ips,
        profile.families,
        profile.actions,
        profile.amounts,
        profile.failures,
        profile.recent,
        sessions,
        profile.payees,
        steps,
        profile.pending,
        profile.challenged,
        profile.ref,
        profile.data_key,
        profile.windows,
    ]
    body: bytes = msgpack.packb(fields, use_bin_type=True)
    deflate = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS, _MEM_LEVEL)
    small = deflate.compress(body) + deflate.flush()
    if len(small) < len(body):
        return bytes((BINARY_VERSION, _DEFLATE)) + small
    return bytes((BINARY_VERSION, _PLAIN)) + body


def unpack(payload: bytes) -> Profile:
    """The profile ``pack`` wrote; ValueError (or TypeError) when it cannot be read."""
    compression, body = payload[1:2], payload[2:]
    if compression == bytes((_DEFLATE,)):
        try:
            body = zlib.decompress(body, -15)
        except zlib.error as exc:
            raise ValueError(f"the packed profile does not inflate: {exc}") from exc
    elif compression != bytes((_PLAIN,)):
        raise ValueError(f"unknown compression {compression!r}")
    fields = msgpack.unpackb(body, raw=False, strict_map_key=False)
    if not isinstance(fields, list) or len(fields) != 26:
        raise ValueError("the packed profile is not an array of 26 fields")
    (user_key, created, last, last_seen, n_events, n_seen, places, devices, hours) = fields[:9]
    return Profile(
        user_key=user_key,
        created_ts=created,
        last_ts=last,
        last_seen_ts=last_seen,
        n_events=n_events,
        n_seen=n_seen,
        places=[Place(*row) for row in _rows(places, _PLACE)],
        devices={row[0]: DeviceRecord(*row[1:]) for row in _rows(devices, _DEVICE)},
        hours=hours,
        countries=fields[9],
        cities=fields[10],
        networks=fields[11],
        ips=fields[12],
        families=fields[13],
        actions=fields[14],
        amounts=fields[15],
        failures=fields[16],
        recent=fields[17],
        sessions={row[0]: SessionRecord(*row[1:]) for row in _rows(fields[18], _SESSION)},
        payees=fields[19],
        steps=[Step(*row) for row in _rows(fields[20], _STEP)],
        pending=fields[21],
        challenged=fields[22],
        ref=fields[23],
        data_key=fields[24],
        windows=fields[25],
    )


def _rows(items: list[Any], size: int) -> list[list[Any]]:
    if len(items) % size:
        raise ValueError(f"a packed list of {len(items)} items does not split into {size}s")
    return [items[i : i + size] for i in range(0, len(items), size)]
