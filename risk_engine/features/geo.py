"""Geo signals: travel speed from the last trusted place, new and familiar places.

A network is familiar at the level where familiarity is true: its family (the
ASN, or a coarse prefix in a city; see ``observation.network_family``). A phone
hopping between its carrier's addresses, an exit pool of the user's VPN, an
office's NAT range are not new networks; a network elsewhere still is.
"""

from __future__ import annotations

from risk_engine.decision import Reason
from risk_engine.features.common import (
    FeatureView,
    Lesson,
    Weighted,
    duration_text,
    effective_distance_km,
    is_new,
    km_text,
    log1p,
    mass,
    novelty,
    regular,
    speed_kmh,
    top_count,
)
from risk_engine.features.crowd import crowded
from risk_engine.features.observation import Observation
from risk_engine.profiles.model import (
    MAX_CITIES,
    MAX_COUNTRIES,
    MAX_FAMILIES,
    MAX_IPS,
    MAX_NETWORKS,
    MAX_PLACES,
    BurstCounts,
    Place,
    Profile,
    bump,
    push_bounded,
)

# Faster than an airliner over a distance a GeoIP error cannot explain.
IMPOSSIBLE_KMH = 1000.0
IMPOSSIBLE_MIN_KM = 300.0
# A city seen this often is one of the user's places: jumping back to it (a VPN
# exit, a second home) is no travel evidence, however fast.
FAMILIAR_CITY_COUNT = 2.0

NAMES: tuple[str, ...] = (
    "geo_unknown",
    "travel_log_km",
    "speed_log_kmh",
    "impossible_travel",
    "new_country",
    "new_city",
    "new_network",
    "new_ip",
    "country_familiarity",
    "city_familiarity",
    "network_familiarity",
    "ip_familiarity",
    "anonymous_ip",
    "country_novelty",
    "network_novelty",
    "ip_novelty",
)


def familiar_destination(profile: Profile, obs: Observation) -> bool:
    entry = profile.cities.get(obs.city_key)
    return entry is not None and entry[0] >= FAMILIAR_CITY_COUNT


def travel(profile: Profile, obs: Observation) -> tuple[float, float, float]:
    """(effective km, seconds, km/h) from the last trusted place; zeros when unknown.

    Distance and speed are 0 when the destination is one of the user's familiar
    cities: a VPN user switching between home and the usual exit, a commuter
    between two homes, travel nowhere new.
    """
    if not obs.geo_known or obs.latitude is None or obs.longitude is None or not profile.places:
        return 0.0, 0.0, 0.0
    last = profile.places[-1]
    km = effective_distance_km(
        last.latitude,
        last.longitude,
        last.accuracy_km,
        obs.latitude,
        obs.longitude,
        obs.accuracy_km,
    )
    seconds = max(0.0, obs.ts - last.ts)
    if familiar_destination(profile, obs):
        return 0.0, seconds, 0.0
    return km, seconds, speed_kmh(km, seconds)


def family_count(profile: Profile, obs: Observation) -> float:
    """Trusted events from this network's family; a family without a city is the same
    block in the same country, so it matches the family in any of its cities.

    GeoIP places some blocks of a carrier in a city and others only in a country.
    """
    families, family = profile.families, obs.network_family
    entry = families.get(family)
    if entry is not None:
        return entry[0]
    at = family.find("@")
    slash = family.find("/", at) if at >= 0 else -1
    if slash < 0:  # an ASN, or nothing to widen
        return 0.0
    country_wide = family[: slash + 1]
    if family != country_wide:
        entry = families.get(country_wide)
        return entry[0] if entry is not None else 0.0
    return max([v[0] for k, v in families.items() if k.startswith(country_wide)], default=0.0)


def familiar_place_and_network(profile: Profile, obs: Observation) -> bool:
    """A familiar city reached through a familiar network family: the user's own habit."""
    return familiar_destination(profile, obs) and family_count(profile, obs) > 0.0


def new_network(profile: Profile, obs: Observation, family_seen: float, crowd: bool) -> float:
    """1.0 when neither the network nor its family was seen in a trusted event, and
    the network is no crowd's in the user's country (features.crowd)."""
    if family_seen > 0.0 or crowd:
        return 0.0
    return is_new(profile, profile.networks, obs.network)


def compute(profile: Profile, bursts: BurstCounts, obs: Observation) -> tuple[float, ...]:
    km, _, kmh = travel(profile, obs)
    impossible = 1.0 if kmh > IMPOSSIBLE_KMH and km > IMPOSSIBLE_MIN_KM else 0.0
    city = obs.city_key
    countries, networks, families = profile.countries, profile.networks, profile.families
    # Each map serves a familiarity and a novelty: sum its mass once.
    country_mass, network_mass = mass(countries), mass(networks)
    # Profiles stored before families have none yet: their networks stand in.
    family_mass = mass(families) if families else network_mass
    network_top = top_count(networks)
    family_top = top_count(families) if families else network_top
    network_familiarity = regular(networks, obs.network, network_top)
    family_seen = family_count(profile, obs) if families else 0.0
    if family_seen:
        # The matching family's count against the top family's: ``regular`` without
        # its REGULAR_COUNT rule (feature version 5's model was trained on this).
        network_familiarity = max(network_familiarity, family_seen / (family_top + len(families)))
    crowd = crowded(profile, bursts, obs)
    if crowd:
        # A crowd's network counts as seen once by this user.
        network_familiarity = max(network_familiarity, 1.0 / (family_top + len(families) + 1.0))
    ips = profile.ips
    ip_mass = mass(ips)
    return (
        0.0 if obs.geo_known else 1.0,
        log1p(km),
        log1p(kmh),
        impossible,
        is_new(profile, countries, obs.country),
        is_new(profile, profile.cities, city),
        new_network(profile, obs, family_seen, crowd),
        is_new(profile, ips, obs.ip_key),
        regular(countries, obs.country),
        regular(profile.cities, city),
        network_familiarity,
        regular(ips, obs.ip_key),
        1.0 if obs.is_anonymous else 0.0,
        novelty(countries, country_mass),
        novelty(families, family_mass) if families else novelty(networks, network_mass),
        novelty(ips, ip_mass),
    )


def learn(profile: Profile, obs: Observation, lesson: Lesson) -> None:
    """A trusted event's place, country, city, network, network family and address."""
    if not lesson.trusted:
        return
    ts = obs.ts
    if obs.geo_known and obs.latitude is not None and obs.longitude is not None:
        push_bounded(
            profile.places,
            Place(ts, obs.latitude, obs.longitude, obs.accuracy_km, obs.country, obs.city),
            MAX_PLACES,
        )
    if obs.country:
        bump(profile.countries, obs.country, ts, MAX_COUNTRIES)
    if obs.city_key:
        bump(profile.cities, obs.city_key, ts, MAX_CITIES)
    bump(profile.networks, obs.network, ts, MAX_NETWORKS)
    if obs.network_family:
        bump(profile.families, obs.network_family, ts, MAX_FAMILIES)
    bump(profile.ips, obs.ip_key, ts, MAX_IPS)


def explain(
    profile: Profile, bursts: BurstCounts, obs: Observation, values: FeatureView
) -> list[Weighted]:
    """Travel from the last trusted place, then new or unlocatable places and networks."""
    return _travel(profile, obs, values) + _places(profile, obs, values)


def _travel(profile: Profile, obs: Observation, values: FeatureView) -> list[Weighted]:
    km, seconds, kmh = travel(profile, obs)
    if km <= 0 or not profile.places:
        return []
    origin = profile.places[-1]
    where = f"{origin.city}, {origin.country}" if origin.city else origin.country or "last place"
    detail = f"{km_text(km)} from {where} in {duration_text(seconds)} ({kmh:,.0f} km/h)"
    if values["impossible_travel"]:
        return [(10.0, Reason(code="impossible_travel", detail=detail))]
    if km > 500:
        return [(3.0, Reason(code="long_distance", detail=detail))]
    return []


def _places(profile: Profile, obs: Observation, values: FeatureView) -> list[Weighted]:
    out: list[Weighted] = []
    if values["geo_unknown"]:
        out.append((1.0, Reason(code="unknown_location", detail="the address cannot be located")))
    if values["new_country"]:
        usual = ", ".join(sorted(profile.countries, key=lambda c: -profile.countries[c][0])[:3])
        out.append(
            (
                6.0,
                Reason(code="new_country", detail=f"first time from {obs.country}; usual: {usual}"),
            )
        )
    elif values["new_city"]:
        out.append((2.5, Reason(code="new_city", detail=f"first time from {obs.place}")))
    if values["new_network"]:
        known = len(profile.families) or len(profile.networks)
        out.append(
            (
                2.0,
                Reason(
                    code="new_network",
                    detail=f"first time from network {obs.network} "
                    f"({known} network families known)",
                ),
            )
        )
    if values["anonymous_ip"]:
        out.append((5.0, Reason(code="anonymous_ip", detail="VPN, proxy or Tor exit address")))
    return out
