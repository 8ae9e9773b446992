"""Geo signals: travel speed from the last trusted place, new and familiar places."""

from __future__ import annotations

from risk_engine.features.common import (
    effective_distance_km,
    familiarity,
    is_new,
    log1p,
    speed_kmh,
)
from risk_engine.features.observation import Observation
from risk_engine.profiles.model import BurstCounts, Profile

# Faster than an airliner over a distance a GeoIP error cannot explain.
IMPOSSIBLE_KMH = 1000.0
IMPOSSIBLE_MIN_KM = 300.0

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
)


def travel(profile: Profile, obs: Observation) -> tuple[float, float, float]:
    """(effective km, seconds, km/h) from the last trusted place; zeros when unknown."""
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
    return km, seconds, speed_kmh(km, seconds)


def compute(profile: Profile, bursts: BurstCounts, obs: Observation) -> tuple[float, ...]:
    km, _, kmh = travel(profile, obs)
    impossible = 1.0 if kmh > IMPOSSIBLE_KMH and km > IMPOSSIBLE_MIN_KM else 0.0
    city = f"{obs.country}/{obs.city}" if obs.city else ""
    return (
        0.0 if obs.geo_known else 1.0,
        log1p(km),
        log1p(kmh),
        impossible,
        is_new(profile, profile.countries, obs.country),
        is_new(profile, profile.cities, city),
        is_new(profile, profile.networks, obs.network),
        is_new(profile, profile.ips, obs.ip_key),
        familiarity(profile.countries, obs.country),
        familiarity(profile.cities, city),
        familiarity(profile.networks, obs.network),
        familiarity(profile.ips, obs.ip_key),
        1.0 if obs.is_anonymous else 0.0,
    )
