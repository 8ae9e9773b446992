"""Worlds: how a simulated bank's customers and attackers differ from another bank's.

One simulated world is one opinion about the customers. Judging detection on a
single world overfits the engine to it, so the simulator takes a ``World``: the
share of users who live on cellular networks, come through a VPN always, log in
from offices shared by many colleagues, travel or borrow someone's device, and
the attack mix and the attackers' skill. ``default`` is the world the simulator
always had (same seed, same bytes); the other presets differ on purpose.

A world file is TOML with the same field names, optionally starting from a preset::

    base = "retail"
    name = "my-bank"
    cellular_share = 0.4
    [attack_mix]
    vpn_takeover = 0.3
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from risk_engine.errors import ConfigurationError

__all__ = [
    "ATTACK_TYPES",
    "CONTEXTS",
    "SKILLS",
    "WORLDS",
    "Skill",
    "World",
    "load_world",
]

ATTACK_TYPES = (
    "foreign_takeover",
    "in_country_takeover",
    "targeted_takeover",
    "session_hijack",
    "credential_stuffing",
    "compromised_device",
    "vpn_takeover",
)
# The mix the simulator always had; vpn_takeover came later and is off by default.
DEFAULT_ATTACK_MIX: tuple[tuple[str, float], ...] = (
    ("foreign_takeover", 0.24),
    ("in_country_takeover", 0.16),
    ("targeted_takeover", 0.16),
    ("session_hijack", 0.16),
    ("credential_stuffing", 0.05),
    ("compromised_device", 0.23),
    ("vpn_takeover", 0.0),
)
# Where and how a legitimate event happened, as written in the labels' ``context``.
CONTEXTS = (
    "home",
    "work",
    "corporate",
    "cellular",
    "vpn",
    "trip_domestic",
    "trip_abroad",
    "borrowed_device",
)
Skill = Literal["naive", "mixed", "skilled"]
SKILLS: tuple[Skill, ...] = ("naive", "mixed", "skilled")


@dataclass(frozen=True)
class World:
    """The population and the attackers of one simulated bank."""

    name: str = "default"
    # Users who mostly bank on their phone over a carrier network, hopping between
    # the addresses their carrier hands out in their region.
    cellular_share: float = 0.0
    # Users who always come through a commercial VPN (exits shared with its other users).
    vpn_share: float = 0.0
    # Users who log in on workdays from an office whose egress many colleagues share.
    corporate_share: float = 0.0
    office_size: int = 60
    # Users with a plane trip in the period, and the share of those trips in-country.
    trip_share: float = 0.03
    domestic_trip_share: float = 0.3
    # How far a trip goes at least; in-country trips of a small country need less.
    domestic_trip_km: float = 1000.0
    # Users who now and then log in on someone else's device (family, a friend, a kiosk).
    borrowed_share: float = 0.0
    attack_mix: tuple[tuple[str, float], ...] = DEFAULT_ATTACK_MIX
    # naive attackers act at odd hours with their own locale; skilled ones copy the
    # victim's time zone, language, browser and hours.
    attacker_skill: Skill = "mixed"
    description: str = field(default="the simulator's original world", compare=False)

    def __post_init__(self) -> None:
        for name in (
            "cellular_share",
            "vpn_share",
            "corporate_share",
            "trip_share",
            "domestic_trip_share",
            "borrowed_share",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ConfigurationError(f"world {self.name}: {name} must be in [0, 1]")
        if self.cellular_share + self.vpn_share + self.corporate_share > 1.0 + 1e-9:
            raise ConfigurationError(
                f"world {self.name}: cellular, VPN and corporate shares add up to more than 1"
            )
        if not 50.0 <= self.domestic_trip_km <= 5000.0:
            raise ConfigurationError(f"world {self.name}: domestic_trip_km must be in [50, 5000]")
        if not isinstance(self.office_size, int) or self.office_size < 2:
            raise ConfigurationError(f"world {self.name}: office_size must be an integer >= 2")
        if self.attacker_skill not in SKILLS:
            raise ConfigurationError(
                f"world {self.name}: attacker_skill must be one of {', '.join(SKILLS)}"
            )
        kinds = [k for k, _ in self.attack_mix]
        if sorted(kinds) != sorted(ATTACK_TYPES):
            raise ConfigurationError(
                f"world {self.name}: attack_mix must weigh exactly {', '.join(ATTACK_TYPES)}"
            )
        weights = [w for _, w in self.attack_mix]
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigurationError(
                f"world {self.name}: attack_mix weights must be >= 0 and not all 0"
            )

    def attack_weights(self) -> tuple[float, ...]:
        """The mix's weights in ``ATTACK_TYPES`` order."""
        mix = dict(self.attack_mix)
        return tuple(float(mix[k]) for k in ATTACK_TYPES)


def _mix(**weights: float) -> tuple[tuple[str, float], ...]:
    return tuple((k, float(weights.get(k, 0.0))) for k in ATTACK_TYPES)


WORLDS: dict[str, World] = {
    "default": World(),
    "retail": World(
        name="retail",
        cellular_share=0.2,
        vpn_share=0.04,
        corporate_share=0.1,
        office_size=40,
        trip_share=0.08,
        domestic_trip_share=0.5,
        domestic_trip_km=250.0,
        borrowed_share=0.03,
        attack_mix=_mix(
            foreign_takeover=0.2,
            in_country_takeover=0.1,
            targeted_takeover=0.15,
            session_hijack=0.15,
            credential_stuffing=0.05,
            compromised_device=0.15,
            vpn_takeover=0.2,
        ),
        attacker_skill="mixed",
        description="a consumer bank: some mobile, some VPN and office users, a few trips",
    ),
    "corporate": World(
        name="corporate",
        cellular_share=0.1,
        vpn_share=0.12,
        corporate_share=0.5,
        office_size=150,
        trip_share=0.12,
        domestic_trip_share=0.4,
        domestic_trip_km=250.0,
        borrowed_share=0.01,
        attack_mix=_mix(
            foreign_takeover=0.1,
            in_country_takeover=0.1,
            targeted_takeover=0.25,
            session_hijack=0.15,
            credential_stuffing=0.05,
            compromised_device=0.2,
            vpn_takeover=0.15,
        ),
        attacker_skill="skilled",
        description="business banking: half in large offices, VPNs, travel, skilled attackers",
    ),
    "mobile-heavy": World(
        name="mobile-heavy",
        cellular_share=0.6,
        vpn_share=0.02,
        corporate_share=0.03,
        office_size=30,
        trip_share=0.06,
        domestic_trip_share=0.6,
        domestic_trip_km=250.0,
        borrowed_share=0.06,
        attack_mix=_mix(
            foreign_takeover=0.25,
            in_country_takeover=0.1,
            targeted_takeover=0.1,
            session_hijack=0.2,
            credential_stuffing=0.1,
            compromised_device=0.1,
            vpn_takeover=0.15,
        ),
        attacker_skill="naive",
        description="a mobile-first bank: carrier networks, borrowed phones, naive attackers",
    ),
}

_FLOATS = (
    "domestic_trip_km",
    "cellular_share",
    "vpn_share",
    "corporate_share",
    "trip_share",
    "domestic_trip_share",
    "borrowed_share",
)


def world_from_dict(data: dict[str, Any], source: str) -> World:
    """A world from TOML-like data: ``base`` preset, then the fields given."""
    data = dict(data)
    base_name = data.pop("base", "default")
    if base_name not in WORLDS:
        raise ConfigurationError(f"{source}: base must be one of {', '.join(WORLDS)}")
    return with_settings(WORLDS[str(base_name)], data, source)


def with_settings(world: World, data: dict[str, Any], source: str) -> World:
    """``world`` with the settings in ``data`` changed, each checked as a world file's."""
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key in _FLOATS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(f"{source}: {key} must be a number")
            changes[key] = float(value)
        elif key in ("name", "description", "attacker_skill"):
            if not isinstance(value, str):
                raise ConfigurationError(f"{source}: {key} must be a string")
            changes[key] = value
        elif key == "office_size":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigurationError(f"{source}: office_size must be an integer")
            changes[key] = value
        elif key == "attack_mix":
            if not isinstance(value, dict):
                raise ConfigurationError(f"{source}: attack_mix must be a table")
            unknown = sorted(set(value) - set(ATTACK_TYPES))
            if unknown:
                raise ConfigurationError(f"{source}: attack_mix: unknown attack {unknown[0]!r}")
            mix = dict(world.attack_mix)
            for kind, weight in value.items():
                if isinstance(weight, bool) or not isinstance(weight, int | float):
                    raise ConfigurationError(f"{source}: attack_mix.{kind} must be a number")
                mix[kind] = float(weight)
            changes[key] = tuple((k, mix[k]) for k in ATTACK_TYPES)
        else:
            raise ConfigurationError(f"{source}: unknown world setting {key!r}")
    try:
        return replace(world, **changes)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{source}: {exc.message}") from None


def load_world(spec: str) -> World:
    """A preset by name, or a TOML world file by path."""
    if spec in WORLDS:
        return WORLDS[spec]
    path = Path(spec)
    if not path.is_file():
        raise ConfigurationError(
            f"world {spec!r} is neither a preset ({', '.join(WORLDS)}) nor a TOML file"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"world file {path} is not valid TOML: {exc}") from None
    data.setdefault("name", path.stem)
    return world_from_dict(data, str(path))
