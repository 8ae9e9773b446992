"""Real geography for the simulator: cities with IP networks that resolve to them.

Every address the simulator emits comes from a network found in the GeoLite2 City
database shipped by ``maxminddb-geolite2``, so the engine's GeoIP lookup sees the city
the simulator intended. The pool is built in memory from random public addresses,
deterministically from a seed; nothing is cached on disk.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import maxminddb
import numpy as np

EARTH_RADIUS_KM = 6371.0088
POOL_SAMPLES = 240_000
MAX_ACCURACY_KM = 100
MIN_NETWORKS = 3
# A network whose coordinates stray this far from its city's is left out.
MAX_NETWORK_SPREAD_KM = 60.0

# Reserved and private IPv4 blocks (start, prefix length) never sampled.
_RESERVED: tuple[tuple[int, int], ...] = (
    (0x0A000000, 8),  # 10/8
    (0x7F000000, 8),  # 127/8
    (0x64400000, 10),  # 100.64/10 shared address space
    (0xA9FE0000, 16),  # 169.254/16
    (0xAC100000, 12),  # 172.16/12
    (0xC0A80000, 16),  # 192.168/16
    (0xC0000000, 24),  # 192.0.0/24
    (0xC0000200, 24),  # 192.0.2/24
    (0xC6120000, 15),  # 198.18/15
    (0xC6336400, 24),  # 198.51.100/24
    (0xCB007100, 24),  # 203.0.113/24
)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def ip_text(value: int) -> str:
    """Dotted-quad text of an IPv4 address given as an integer."""
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def geolite2_path() -> str:
    """Path of the GeoLite2 City database shipped by maxminddb-geolite2."""
    from _maxminddb_geolite2 import geolite2_database

    return str(geolite2_database())


def open_reader() -> maxminddb.Reader:
    """Open the shipped GeoLite2 City database (memory-mapped C extension)."""
    return maxminddb.open_database(geolite2_path(), maxminddb.MODE_MMAP_EXT)


@dataclass(frozen=True, slots=True)
class Network:
    """An IPv4 network whose every address resolves to the same GeoLite2 record."""

    base: int
    prefix: int

    def slash24(self, rng: random.Random) -> Network:
        """A random /24 inside this network (or the network itself when smaller)."""
        if self.prefix >= 24:
            return self
        return Network(self.base + (rng.randrange(1 << (24 - self.prefix)) << 8), 24)

    def host(self, rng: random.Random) -> str:
        """A random host address inside the network, avoiding .0 and .255 in a /24."""
        size = 1 << (32 - self.prefix)
        if self.prefix <= 24:
            # Stay off the edges of whichever /24 the address falls into.
            offset = (rng.randrange(size >> 8) << 8) | rng.randint(1, 254)
        elif size >= 4:
            offset = rng.randint(1, size - 2)
        else:
            offset = rng.randrange(size)
        return ip_text(self.base + offset)

    @property
    def key24(self) -> int:
        """The /24 this network starts in (its identity as a 'home network')."""
        return self.base >> 8


@dataclass(frozen=True, slots=True)
class City:
    """A GeoLite2 city with networks that resolve to it."""

    geoname_id: int
    name: str
    country: str
    latitude: float
    longitude: float
    time_zone: str
    networks: tuple[Network, ...]

    def km_to(self, other: City) -> float:
        """Distance to another city in kilometres."""
        return haversine_km(self.latitude, self.longitude, other.latitude, other.longitude)

    def random_network(self, rng: random.Random) -> Network:
        """One of the city's networks narrowed to a /24."""
        return rng.choice(self.networks).slash24(rng)


class CityPool:
    """The cities found in the database, grouped by country, with distance helpers."""

    def __init__(self, cities: list[City]) -> None:
        self.cities: tuple[City, ...] = tuple(sorted(cities, key=lambda c: c.geoname_id))
        grouped: dict[str, list[City]] = defaultdict(list)
        for city in self.cities:
            grouped[city.country].append(city)
        self.by_country: dict[str, tuple[City, ...]] = {k: tuple(v) for k, v in grouped.items()}
        self.countries: tuple[str, ...] = tuple(sorted(self.by_country))
        self._cum: dict[str, list[int]] = {}
        for country, members in self.by_country.items():
            total, cum = 0, []
            for city in members:
                total += len(city.networks)
                cum.append(total)
            self._cum[country] = cum
        self._nearby: dict[tuple[int, float], tuple[City, ...]] = {}

    def city_in(self, rng: random.Random, country: str) -> City:
        """A city of the country, weighted by how many networks it has (a size proxy)."""
        members = self.by_country[country]
        return rng.choices(members, cum_weights=self._cum[country])[0]

    def nearby(self, city: City, max_km: float) -> tuple[City, ...]:
        """Other cities of the same country within max_km."""
        key = (city.geoname_id, max_km)
        found = self._nearby.get(key)
        if found is None:
            found = tuple(
                c
                for c in self.by_country[city.country]
                if c.geoname_id != city.geoname_id and city.km_to(c) <= max_km
            )
            self._nearby[key] = found
        return found

    def far_city(
        self,
        rng: random.Random,
        origin: City,
        *,
        min_km: float,
        same_country: bool,
        avoid_countries: tuple[str, ...] = (),
    ) -> City | None:
        """A city at least min_km from origin, in origin's country or in another one."""
        if same_country:
            candidates = [c for c in self.by_country[origin.country] if origin.km_to(c) >= min_km]
            return rng.choice(candidates) if candidates else None
        for _ in range(60):
            country = rng.choice(self.countries)
            if country == origin.country or country in avoid_countries:
                continue
            city = self.city_in(rng, country)
            if origin.km_to(city) >= min_km:
                return city
        return None


def _reserved_mask(
    ips: np.ndarray[Any, np.dtype[np.uint32]],
) -> np.ndarray[Any, np.dtype[np.bool_]]:
    mask = np.zeros(ips.shape, dtype=bool)
    for start, prefix in _RESERVED:
        shift = np.uint32(32 - prefix)
        mask |= (ips >> shift) == np.uint32(start >> (32 - prefix))
    return mask


@lru_cache(maxsize=4)
def build_city_pool(seed: int, samples: int = POOL_SAMPLES) -> CityPool:
    """Sample random public IPv4 addresses, look them up and group them into cities.

    Keeps records with a city name, a time zone and ``accuracy_radius`` <= 100 km, and
    cities with at least MIN_NETWORKS distinct networks. Pure in (seed, samples), so an
    in-process memo only saves repeated work in one process.
    """
    rng = np.random.default_rng([seed, 0x6E0])
    ips = rng.integers(1 << 24, 224 << 24, size=samples, dtype=np.uint32)
    ips = ips[~_reserved_mask(ips)]
    seen: set[tuple[int, int]] = set()
    # geoname_id -> list of (network, record facts)
    found: dict[int, list[tuple[Network, str, str, float, float, str]]] = defaultdict(list)
    with open_reader() as reader:
        lookup = reader.get_with_prefix_len
        for value in ips.tolist():
            record: Any
            record, prefix = lookup(ip_text(value))
            if not record:
                continue
            shift = 32 - prefix
            base = (value >> shift) << shift
            if (base, prefix) in seen:
                continue
            seen.add((base, prefix))
            city = record.get("city")
            location = record.get("location")
            country = record.get("country")
            if not city or not location or not country or "represented_country" in record:
                continue
            name = city.get("names", {}).get("en")
            zone = location.get("time_zone")
            radius = location.get("accuracy_radius")
            code = country.get("iso_code")
            lat, lon = location.get("latitude"), location.get("longitude")
            if not name or not zone or not code or radius is None or radius > MAX_ACCURACY_KM:
                continue
            if lat is None or lon is None or "geoname_id" not in city:
                continue
            found[int(city["geoname_id"])].append(
                (Network(base, prefix), str(name), str(code), float(lat), float(lon), str(zone))
            )
    cities: list[City] = []
    max_spread = MAX_NETWORK_SPREAD_KM
    for geoname_id, entries in found.items():
        # The city's place is the location most of its networks report.
        spots = Counter((e[3], e[4]) for e in entries)
        (lat, lon), _count = spots.most_common(1)[0]
        _, name, code, _la, _lo, zone = next(e for e in entries if (e[3], e[4]) == (lat, lon))
        networks = tuple(
            sorted(
                (
                    net
                    for net, _n, c, la, lo, z in entries
                    if c == code and z == zone and haversine_km(lat, lon, la, lo) <= max_spread
                ),
                key=lambda n: (n.base, n.prefix),
            )
        )
        if len({n.key24 for n in networks}) >= MIN_NETWORKS:
            cities.append(City(geoname_id, name, code, lat, lon, zone, networks))
    return CityPool(cities)
