"""The stored binary form (version 2): lossless, small, and version-1 JSON still read."""

from __future__ import annotations

import hashlib
import sqlite3
import struct
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from risk_engine.errors import ProfileStoreError
from risk_engine.profiles import RedisStore, SQLiteStore
from risk_engine.profiles.integrity import CorruptProfileError, seal, unseal
from risk_engine.profiles.model import (
    HOURS_OF_WEEK,
    PROFILE_VERSION,
    DeviceRecord,
    Place,
    Profile,
    SessionRecord,
    Step,
)

# Every float, NaN, -0.0 and the infinities too, and the values profiles hold: whole
# seconds, halved counts, GeoIP's four and six decimals, integers at the edge of
# float64's exact range. All must come back bit for bit.
floats = (
    st.floats()
    | st.integers(-(2**54), 2**54).map(float)
    | st.integers(-(2**30), 2**30).map(lambda k: k / 2**20)
    | st.integers(-(10**9), 10**9).map(lambda k: k / 10**4)
    | st.integers(-(10**12), 10**12).map(lambda k: k / 10**6)
    | st.sampled_from([0.0, -0.0, 1.5, 1_700_000_000.0, 1_700_000_000.25])
)
maybe_floats = st.none() | floats
# Keyed hashes as the engine writes them (hex after an optional prefix), hex-like
# text (odd length, upper case), and anything else.
hex_keys = st.builds(
    lambda prefix, raw: prefix + raw.hex(),
    st.sampled_from(["", "id:", "ip:", "net:", "r-", "s:", "é:"]),
    st.binary(min_size=0, max_size=20),
)
text = st.text(max_size=12) | hex_keys | st.text(alphabet="0123456789abcdefABCDEF", max_size=21)
maybe_text = st.none() | text
pair = st.lists(floats, min_size=2, max_size=2)
counter = st.dictionaries(text, pair, max_size=6)
devices = st.builds(
    DeviceRecord,
    key=text,
    has_id=st.booleans(),
    ua_family=text,
    ua_major=text,
    os_family=text,
    os_major=text,
    device_class=text,
    platform=text,
    timezone=text,
    language=text,
    screen=text,
    first_ts=floats,
    last_ts=floats,
    count=st.integers(min_value=-(2**63), max_value=2**64 - 1),
    trusted=st.booleans(),
    trusted_until=maybe_floats,
    acr=maybe_text,
    auth_time=maybe_floats,
    auth_network=maybe_text,
    action_digest=maybe_text,
)
sessions = st.builds(
    SessionRecord,
    ts=floats,
    ip_key=text,
    network=text,
    device_key=text,
    country=text,
    latitude=maybe_floats,
    longitude=maybe_floats,
    accuracy_km=floats,
    place=text,
    acr=maybe_text,
    auth_time=maybe_floats,
    action_digest=maybe_text,
    start_ts=maybe_floats,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | floats | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
profiles = st.builds(
    Profile,
    user_key=text,
    created_ts=floats,
    last_ts=floats,
    last_seen_ts=floats,
    n_events=st.integers(min_value=0, max_value=2**63 - 1),
    n_seen=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    places=st.lists(st.builds(Place, floats, floats, floats, floats, text, text), max_size=4),
    # Keyed by anything, not only their own key: the form keeps both.
    devices=st.dictionaries(text, devices, max_size=3),
    hours=st.lists(floats, min_size=HOURS_OF_WEEK, max_size=HOURS_OF_WEEK),
    countries=counter,
    cities=counter,
    networks=counter,
    ips=counter,
    families=counter,
    actions=counter,
    amounts=st.lists(floats, max_size=8),
    failures=st.lists(floats, max_size=8),
    recent=st.lists(floats, max_size=8),
    sessions=st.dictionaries(text, sessions, max_size=3),
    payees=counter,
    steps=st.lists(st.builds(Step, floats, text, text, maybe_text, text), max_size=3),
    pending=st.dictionaries(text, st.dictionaries(text, json_values, max_size=4), max_size=3),
    challenged=counter,
    ref=text,
    data_key=text,
    windows=st.dictionaries(text, floats, max_size=4),
)


def bits(value: Any) -> Any:
    """``value`` with every float as its bit pattern: NaN equals NaN, -0.0 differs from 0.0."""
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    if isinstance(value, dict):
        return {k: bits(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [bits(v) for v in value]
    return value


@settings(deadline=None, max_examples=300)
@given(profiles)
def test_every_field_survives_the_stored_form_bit_for_bit(profile: Profile) -> None:
    back = Profile.loads(profile.stored())
    assert bits(back.to_dict()) == bits(profile.to_dict())
    assert (back.ref, back.data_key) == (profile.ref, profile.data_key)
    assert [type(d) for d in back.devices.values()] == [DeviceRecord] * len(profile.devices)


def test_the_stored_form_starts_with_its_version() -> None:
    profile = Profile("alice", n_seen=3)
    assert profile.pack()[0] == PROFILE_VERSION == 2
    assert Profile.loads(profile.pack()) == profile


def test_a_later_version_is_refused_not_quarantined() -> None:
    later = bytes([PROFILE_VERSION + 1]) + Profile("alice").pack()[1:]
    with pytest.raises(ProfileStoreError, match="version 3") as caught:
        Profile.loads(seal(later))
    assert not isinstance(caught.value, CorruptProfileError)


def version_1(profile: Profile, *, sealed: bool) -> bytes:
    """The record a version-1 engine stored: JSON, behind a checksum or (older) not."""
    raw = orjson.dumps({**profile.to_dict(), "version": 1})
    return seal(raw) if sealed else raw


@pytest.mark.parametrize("sealed", [True, False], ids=["crc32", "plain"])
def test_version_1_json_reads(sealed: bool) -> None:
    profile = Profile("alice", n_seen=41)
    profile.ips["ipk"] = [2.0, 1_700_000_000.5]
    back = Profile.loads(version_1(profile, sealed=sealed))
    assert back == profile
    assert (back.ref, back.data_key) == (profile.ref, profile.data_key)


@pytest.mark.parametrize("sealed", [True, False], ids=["crc32", "plain"])
def test_sqlite_reads_version_1_and_writes_version_2(tmp_path: Path, sealed: bool) -> None:
    path = tmp_path / "profiles.db"
    store = SQLiteStore(path)
    store.update("alice", lambda p: None)
    store.close()
    old = Profile("alice", n_seen=41)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "UPDATE profiles SET data = ? WHERE user_key = 'alice'",
            (version_1(old, sealed=sealed),),
        )
    conn.close()
    store = SQLiteStore(path)
    try:
        assert store.get("alice") == old
        assert store.update("alice", lambda p: setattr(p, "n_seen", p.n_seen + 1)) is None
        assert store.get("alice") == Profile("alice", n_seen=42)
    finally:
        store.close()
    conn = sqlite3.connect(path)
    (data,) = conn.execute("SELECT data FROM profiles WHERE user_key = 'alice'").fetchone()
    conn.close()
    assert data == Profile("alice", n_seen=42, ref=old.ref, data_key=old.data_key).stored()
    assert unseal(data)[0] == PROFILE_VERSION


@pytest.mark.parametrize("sealed", [True, False], ids=["crc32", "plain"])
def test_redis_reads_version_1_and_writes_version_2(
    redis_url: str, redis_prefix: str, sealed: bool
) -> None:
    client = redis.Redis.from_url(redis_url)
    store = RedisStore(redis_url, prefix=redis_prefix)
    old = Profile("alice", n_seen=41)
    try:
        store.update("alice", lambda p: None)
        (key,) = client.keys(f"{redis_prefix}:profile:*")
        client.set(key, version_1(old, sealed=sealed))
        assert store.get("alice") == old
        store.update("alice", lambda p: setattr(p, "n_seen", p.n_seen + 1))
        assert store.get("alice") == Profile("alice", n_seen=42)
        written = client.get(key)
        assert written == Profile("alice", n_seen=42, ref=old.ref, data_key=old.data_key).stored()
        assert written is not None and unseal(written)[0] == PROFILE_VERSION
    finally:
        store.close()
        client.close()


def large_profile() -> Profile:
    """A profile whose body is well past 16 KiB, each device key met again in a session.

    The sessions come after the devices in the body, so a key seen again is more
    than 16 KiB back for most devices: a 32 KiB window would reach it, a 16 KiB one not.
    """
    profile = Profile("alice")
    for k in range(120):
        key = "id:" + hashlib.sha256(b"device %d" % k).hexdigest()
        profile.devices[key] = DeviceRecord(key, True, first_ts=float(k), last_ts=float(k))
    for k, key in enumerate(profile.devices):
        profile.sessions[f"s{k}"] = SessionRecord(float(k), "", "", key, "")
    return profile


def body_of(profile: Profile) -> bytes:
    """The msgpack body of the stored form (inflated, if it was deflated)."""
    payload = profile.pack()
    if payload[1] == 1:
        return zlib.decompress(payload[2:], -15)
    return payload[2:]


def inflate_through(data: bytes, wbits: int) -> bytes:
    """Raw inflate in small pieces, so that a reference back reads the window, not the output."""
    inflate, out = zlib.decompressobj(wbits), []
    while data:
        out.append(inflate.decompress(data, 512))
        data = inflate.unconsumed_tail
    return b"".join(out)


def test_the_writer_deflates_within_a_16_kib_window() -> None:
    profile = large_profile()
    assert len(body_of(profile)) > 2 * 16384
    payload = profile.pack()
    assert payload[1] == 1  # deflated
    # Raw deflate with a smaller window is the same format to every reader.
    assert inflate_through(payload[2:], -14) == body_of(profile)


def test_a_profile_deflated_with_the_full_window_still_reads() -> None:
    profile = large_profile()
    deflate = zlib.compressobj(1, zlib.DEFLATED, -15, 8)
    older = bytes((PROFILE_VERSION, 1)) + deflate.compress(body_of(profile)) + deflate.flush()
    with pytest.raises(zlib.error):  # it does reach back beyond 16 KiB
        inflate_through(older[2:], -14)
    back = Profile.loads(seal(older))
    assert bits(back.to_dict()) == bits(profile.to_dict())
