"""The per-user behavioral profile: compact, bounded whatever the history length.

Every collection has a cap and evicts its least recently seen entry, so a user
with a million events costs the same few kilobytes as one with a hundred. The
stored form starts with its version so that stored profiles survive upgrades:
version 2 is the compact binary form (profiles.packed); version 1 records (JSON)
still read, and are written as version 2 on their user's next update.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack
import orjson

from risk_engine.errors import ProfileStoreError
from risk_engine.profiles.integrity import CorruptProfileError, seal, unseal
from risk_engine.sealing import new_data_key, new_ref

PROFILE_VERSION = 2
# Versions whose dict form (``to_dict``, JSON) ``from_dict`` reads: the dict form is
# the same in both; version 2 changed only the bytes the stores keep.
_DICT_VERSIONS = (1, 2)
HOURS_OF_WEEK = 168

# Caps: generous for real users, small enough to keep a profile near 10 KB.
MAX_PLACES = 8
MAX_DEVICES = 12
MAX_COUNTRIES = 24
MAX_CITIES = 24
MAX_NETWORKS = 48
# Network families (an ASN, or a coarse prefix in a city): a user has few.
MAX_FAMILIES = 24
MAX_IPS = 48
MAX_ACTIONS = 32
MAX_AMOUNTS = 64
MAX_FAILURES = 32
MAX_RECENT = 32
MAX_SESSIONS = 16
MAX_PENDING = 16
# Burst windows a profile remembers having noted, so erasure finds its entries there.
MAX_WINDOWS = 32
# Payees (keyed hashes) the user has added or paid in trusted events.
MAX_PAYEES = 32
# Recent steps that open a way to money or control (a payee added, a credential changed).
MAX_STEPS = 8
# A held step-up older than this (by event time) can no longer complete: its challenge
# lives an hour at most (RISK_ENGINE_CHALLENGE_TTL_S). Kept longer, it only weighs on
# every write of the profile.
MAX_PENDING_AGE_S = 86400.0
# The hour histogram is halved when its mass passes this, so old habits fade.
HOUR_MASS_CAP = 400.0

# The records below are plain dataclasses, without __slots__: orjson serialises a
# slotted one about three times slower (per attribute lookups instead of __dict__),
# and ``dumps`` runs on every decision.


@dataclass
class DeviceRecord:
    """A device the user has been seen on."""

    key: str
    has_id: bool
    ua_family: str = ""
    ua_major: str = ""
    os_family: str = ""
    os_major: str = ""
    device_class: str = ""
    platform: str = ""
    timezone: str = ""
    language: str = ""
    screen: str = ""
    first_ts: float = 0.0
    last_ts: float = 0.0
    count: int = 0
    trusted: bool = False
    trusted_until: float | None = None
    # The assurance of a step-up passed without a session on this device: it covers
    # this device on ``auth_network`` only (see Engine._assurance).
    acr: str | None = None
    auth_time: float | None = None
    auth_network: str | None = None
    action_digest: str | None = None

    def is_trusted(self, now: float) -> bool:
        """Trusted, and the trust (from a passed step-up) not yet expired."""
        return self.trusted and (self.trusted_until is None or now <= self.trusted_until)


@dataclass
class Place:
    """Where the user was at a trusted moment."""

    ts: float
    latitude: float
    longitude: float
    accuracy_km: float
    country: str
    city: str


@dataclass
class Step:
    """A recent event that prepares a way to money or control, whatever its decision.

    ``kind`` is ``payee`` (a payee added) or ``credential`` (a password, e-mail or
    MFA change); ``payee`` is the keyed hash of the payee added, when one was named.
    """

    ts: float
    kind: str
    action: str
    session_id: str | None = None
    payee: str = ""


@dataclass
class SessionRecord:
    """The last event seen in one application session, and its step-up assurance."""

    ts: float
    ip_key: str
    network: str
    device_key: str
    country: str
    latitude: float | None = None
    longitude: float | None = None
    accuracy_km: float = 0.0
    place: str = ""
    acr: str | None = None
    auth_time: float | None = None
    # The action the last passed step-up was for: a money action covers only that one.
    action_digest: str | None = None
    # When the session's first event (its login, usually) was seen.
    start_ts: float | None = None


@dataclass
class Profile:
    """Everything the engine remembers of one user."""

    user_key: str
    version: int = PROFILE_VERSION
    created_ts: float = 0.0
    last_ts: float = 0.0
    last_seen_ts: float = 0.0
    n_events: int = 0
    n_seen: int = 0
    places: list[Place] = field(default_factory=list)
    devices: dict[str, DeviceRecord] = field(default_factory=dict)
    hours: list[float] = field(default_factory=lambda: [0.0] * HOURS_OF_WEEK)
    # name -> [count, last_ts]
    countries: dict[str, list[float]] = field(default_factory=dict)
    cities: dict[str, list[float]] = field(default_factory=dict)
    networks: dict[str, list[float]] = field(default_factory=dict)
    ips: dict[str, list[float]] = field(default_factory=dict)
    families: dict[str, list[float]] = field(default_factory=dict)
    actions: dict[str, list[float]] = field(default_factory=dict)
    amounts: list[float] = field(default_factory=list)
    failures: list[float] = field(default_factory=list)
    recent: list[float] = field(default_factory=list)
    sessions: dict[str, SessionRecord] = field(default_factory=dict)
    payees: dict[str, list[float]] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    # event_id -> the observation to learn if its step-up passes (see engine), with the
    # id of its challenge under "challenge_id" (erasure deletes those challenges)
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    # action and device key -> [count, last_ts] of step-ups not passed (unanswered or
    # failed), so that trying again is challenged again (see unpassed_step_up)
    challenged: dict[str, list[float]] = field(default_factory=dict)
    # A random pseudonym and AES key, made with the profile and erased with it: audit and
    # feedback lines name the ref and seal their personal fields under the key (sealing.py).
    # Random, so left out of equality: two profiles of the same history are equal.
    ref: str = field(default_factory=new_ref, compare=False)
    data_key: str = field(default_factory=new_data_key, compare=False, repr=False)
    # Burst window ("ip:..." / "net:...") -> last event time noted there: where erasure
    # removes the user's entries, without a scan of every window.
    windows: dict[str, float] = field(default_factory=dict)

    @property
    def is_new(self) -> bool:
        return self.n_seen == 0

    def note_window(self, key: str, ts: float) -> None:
        """Remember that an event of this user was noted in burst window ``key``."""
        windows = self.windows
        if key not in windows and len(windows) >= MAX_WINDOWS:
            del windows[min(windows, key=windows.__getitem__)]
        if windows.get(key, float("-inf")) < ts:
            windows[key] = ts

    def challenge_ids(self) -> list[str]:
        """The ids of the challenges of this user's pending step-ups."""
        return [str(p["challenge_id"]) for p in self.pending.values() if p.get("challenge_id")]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def dumps(self) -> bytes:
        """The JSON form (``to_dict``'s), for people and tools; stores keep ``pack``.

        orjson serialises dataclasses natively, field by field: the same JSON as
        ``to_dict`` gives, some twenty times faster than ``asdict``'s deep copy.
        """
        return orjson.dumps(self)

    def pack(self) -> bytes:
        """The compact binary form, version byte first (profiles.packed)."""
        from risk_engine.profiles.packed import pack

        return pack(self)

    def stored(self) -> bytes:
        """What a store keeps: ``pack`` behind a checksum (profiles.integrity)."""
        return seal(self.pack())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        version = data.get("version")
        if version not in _DICT_VERSIONS:
            raise ProfileStoreError(
                f"stored profile has version {version!r}; this engine reads {_DICT_VERSIONS}"
            )
        try:
            return cls(
                user_key=data["user_key"],
                version=PROFILE_VERSION,
                created_ts=data["created_ts"],
                last_ts=data["last_ts"],
                last_seen_ts=data["last_seen_ts"],
                n_events=data["n_events"],
                n_seen=data["n_seen"],
                places=[Place(**p) for p in data["places"]],
                devices={k: DeviceRecord(**d) for k, d in data["devices"].items()},
                hours=list(data["hours"]),
                countries=data["countries"],
                cities=data["cities"],
                networks=data["networks"],
                ips=data["ips"],
                # Absent from profiles stored before network families and payees.
                families=data.get("families", {}),
                actions=data["actions"],
                amounts=data["amounts"],
                failures=data["failures"],
                recent=data["recent"],
                sessions={k: SessionRecord(**s) for k, s in data["sessions"].items()},
                payees=data.get("payees", {}),
                steps=[Step(**s) for s in data.get("steps", ())],
                pending=data["pending"],
                # Absent from profiles stored before step-ups were remembered.
                challenged=data.get("challenged", {}),
                # Profiles stored before erasure could shred them get their key on read.
                ref=data.get("ref") or new_ref(),
                data_key=data.get("data_key") or new_data_key(),
                windows=data.get("windows", {}),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise CorruptProfileError(f"stored profile is malformed: {exc!r}") from exc

    @classmethod
    def loads(cls, raw: bytes | str) -> Profile:
        """A profile from ``stored`` (checksum verified), ``pack`` or ``dumps`` bytes.

        The first byte tells the form: the binary version, or ``{`` for JSON (version
        1 records, and ``dumps``). CorruptProfileError when the bytes are damaged (the
        store quarantines those); ProfileStoreError for a version this engine does not
        read (never quarantined: a newer engine may share the store).
        """
        from risk_engine.profiles.packed import BINARY_VERSION, unpack

        payload = unseal(raw)
        version = payload[0] if payload else None
        if version == BINARY_VERSION:
            try:
                return unpack(payload)
            except (ValueError, TypeError, IndexError, KeyError, msgpack.UnpackException) as exc:
                raise CorruptProfileError(f"stored profile is malformed: {exc!r}") from exc
        if version is not None and BINARY_VERSION < version < 0x20:
            # A control byte, never the start of JSON: a later binary version.
            raise ProfileStoreError(
                f"stored profile has version {version}; this engine reads {PROFILE_VERSION}"
            )
        return cls._from_json(payload)

    @classmethod
    def _from_json(cls, payload: bytes) -> Profile:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise CorruptProfileError(f"stored profile is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise CorruptProfileError("stored profile is not a JSON object")
        return cls.from_dict(data)


def bump(counter: dict[str, list[float]], key: str, ts: float, cap: int) -> None:
    """Count ``key`` at ``ts`` in a [count, last_ts] map, evicting the stalest past ``cap``."""
    entry = counter.get(key)
    if entry is None:
        if len(counter) >= cap:
            stalest = min(counter, key=lambda k: counter[k][1])
            del counter[stalest]
        counter[key] = [1.0, ts]
    else:
        entry[0] += 1.0
        entry[1] = max(entry[1], ts)


def push_bounded(items: list[Any], item: Any, cap: int) -> None:
    """Append and keep only the newest ``cap`` items."""
    items.append(item)
    if len(items) > cap:
        del items[: len(items) - cap]


@dataclass(frozen=True, slots=True)
class BurstCounts:
    """Cross-user activity seen recently from this address and its network.

    And the network's crowd (profiles.crowds): the other users established on
    it, and over how many distinct days they first succeeded there.
    """

    ip_users: int = 0
    ip_failures: int = 0
    network_users: int = 0
    network_failures: int = 0
    crowd_users: int = 0
    crowd_days: int = 0
