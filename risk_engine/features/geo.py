"""Geo signals: travel speed from the last trusted place, new and familiar places."""

from __future__ import annotations

from risk_engine.features.common import (
    effective_distance_km,
    familiarity,
    is_new,
    log1p,
    mass,
    novelty,
    speed_kmh,
)
from risk_engine.features.observation import Observation
from risk_engine.profiles.model import BurstCounts, Profile

# Faster than an airliner over a distance a GeoIP error cannot explain.
IMPOSSIBLE_KMH = 1000.0
IMPOSSIBLE_MIN_KM = 300.0
# A city seen this often is one of the user's places: jumping back to it (a VPN
# exit, a second home) is no travel evidence, however fast.
FAMILIAR_CITY_COUNT = 2.0

NAMES = (
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
)


def familiar_destination(profile: Profile, obs: Observation) -> bool:
    entry = profile.cities.get(obs.city_key)
    return entry is not None and entry[0] >= FAMILIAR_CITY_COUNT


def travel(profile: Profile, obs: Observation) -> tuple[float, float, float]:
    """(effective km, seconds, km/h) from the last trusted place; zeros when unknown.

    The speed is 0 when the destination is one of the user's familiar cities.
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
        return km, seconds, 0.0
    return km, seconds, speed_kmh(km, seconds)


def compute(profile: Profile, bursts: BurstCounts, obs: Observation) -> tuple[float, ...]:
    km, _, kmh = travel(profile, obs)
    impossible = 1.0 if kmh > IMPOSSIBLE_KMH and km > IMPOSSIBLE_MIN_KM else 0.0
    city = obs.city_key
    countries, networks = profile.countries, profile.networks
    # Both maps serve a familiarity and a novelty: sum their masses once.
    country_mass, network_mass = mass(countries), mass(networks)
    return (
        0.0 if obs.geo_known else 1.0,
        log1p(km),
        log1p(kmh),
        impossible,
        is_new(profile, countries, obs.country),
        is_new(profile, profile.cities, city),
        is_new(profile, networks, obs.network),
        is_new(profile, profile.ips, obs.ip_key),
        familiarity(countries, obs.country, country_mass),
        familiarity(profile.cities, city),
        familiarity(networks, obs.network, network_mass),
        familiarity(profile.ips, obs.ip_key),
        1.0 if obs.is_anonymous else 0.0,
        novelty(countries, country_mass),
        novelty(networks, network_mass),
    )
