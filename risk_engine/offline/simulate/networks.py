"""Networks that many users share: carriers, commercial VPNs and company offices.

These are what make a careful behavioral model raise false alarms at a real bank:
a cellular user's address changes every session and often geolocates to the next
town; a VPN user's exit is shared with thousands of strangers; an office's egress
carries a hundred colleagues, sometimes from a head office in another city. The
world (``world``) says how many users live on each; this module gives
them the shared networks, from a random stream of its own so that a world without
them draws nothing and the default world's output is unchanged.
"""

from __future__ import annotations

import random
from dataclasses import replace

from risk_engine.offline.simulate.geo import City, CityPool
from risk_engine.offline.simulate.profiles import (
    COUNTRIES,
    FAMILIES,
    SCREENS,
    VERSIONS,
    Device,
    Exit,
    Office,
    User,
    desktop_device,
    phone_device,
    pick,
    pick_version,
)
from risk_engine.offline.simulate.world import World

VPN_PROVIDERS = 4
VPN_EXIT_COUNTRIES = ("NL", "DE", "SE", "CH", "GB", "US", "SG", "CA", "FR", "RO", "ES")
CARRIER_NEARBY_KM = 120.0
# Each session of a cellular user gets a fresh carrier address; this share of them
# geolocates to a nearby town rather than the home city.
CARRIER_AWAY_SHARE = 0.3
OFFICE_START, OFFICE_END = 8.5, 18.0
AT_OFFICE = 0.75  # share of workday office-hours sessions made from the office


class SharedNetworks:
    """Carrier pools per city, VPN exits per (provider, country), offices per country."""

    def __init__(self, rng: random.Random, pool: CityPool) -> None:
        self.rng = rng
        self.pool = pool
        self._carriers: dict[int, tuple[tuple[City, str], ...]] = {}
        self._vpn: dict[tuple[int, str], Exit] = {}

    def carrier_pool(self, home: City) -> tuple[tuple[City, str], ...]:
        """The carrier addresses of a city's users: the city's and nearby towns' (shared)."""
        found = self._carriers.get(home.geoname_id)
        if found is None:
            rng = self.rng
            near = list(self.pool.nearby(home, CARRIER_NEARBY_KM))
            rng.shuffle(near)
            entries: list[tuple[City, str]] = []
            for city in (home, *near[:3]):
                for _ in range(rng.randint(2, 4)):
                    net = city.random_network(rng)
                    entries.extend((city, net.host(rng)) for _ in range(rng.randint(4, 12)))
            found = self._carriers[home.geoname_id] = tuple(entries)
        return found

    def vpn_exit(self, provider: int, country: str) -> Exit | None:
        """The provider's exit in a country (one /24, a few addresses), None if no city."""
        if country not in self.pool.by_country:
            return None
        key = (provider, country)
        found = self._vpn.get(key)
        if found is None:
            rng = self.rng
            city = self.pool.city_in(rng, country)
            net = city.random_network(rng)
            found = self._vpn[key] = Exit(
                city, tuple(net.host(rng) for _ in range(rng.randint(2, 6)))
            )
        return found


def _offices(
    rng: random.Random, pool: CityPool, workers: list[User], size: int
) -> dict[int, Office]:
    """Offices per country for the corporate users; each user -> the nearest office."""
    by_country: dict[str, list[User]] = {}
    for user in workers:
        by_country.setdefault(user.country, []).append(user)
    assigned: dict[int, Office] = {}
    for country in sorted(by_country):
        members = by_country[country]
        count = max(1, round(len(members) / size))
        offices: list[Office] = []
        for _ in range(count):
            city = pool.city_in(rng, country)
            net = city.random_network(rng)
            egress = Exit(city, tuple(net.host(rng) for _ in range(rng.randint(1, 3))))
            family = pick(rng, FAMILIES["windows"])
            major, minor = pick_version(rng, VERSIONS[family])
            offices.append(Office(egress, family, major, minor))
        for user in members:
            assigned[user.index] = min(offices, key=lambda o: user.home.km_to(o.egress.city))
    return assigned


def _work_device(rng: random.Random, user: User, office: Office) -> Device:
    """The office's standard desktop, with the user's own id and language."""
    base = desktop_device(
        rng, kind="desktop", zone=user.home.time_zone, language=user.language, mac_share=0.0
    )
    return Device(
        base.id,
        "desktop",
        office.family,
        "windows",
        office.major,
        office.minor,
        office.egress.city.time_zone,
        user.language,
        pick(rng, SCREENS["windows"]),
    )


def borrowed_device(rng: random.Random, user: User) -> Device:
    """Someone else's browser: a relative's laptop or phone, a friend's, a kiosk."""
    info = COUNTRIES[user.country]
    zone = user.home.time_zone
    if rng.random() < 0.5:
        return phone_device(rng, zone=zone, language=user.language, iphone_share=info.iphone_share)
    device = desktop_device(
        rng, kind="laptop", zone=zone, language=user.language, mac_share=info.mac_share
    )
    return device if rng.random() < 0.7 else replace(device, id=None)


def assign_world(
    rng: random.Random, pool: CityPool, users: list[User], world: World
) -> SharedNetworks | None:
    """Give the world's shares of users their cellular, VPN, office and borrowing habits.

    Users with a benign scenario keep it; the three network habits are disjoint.
    Returns the shared networks (None when the world has none of these users).
    """
    shares = (world.cellular_share, world.vpn_share, world.corporate_share, world.borrowed_share)
    if not any(shares):
        return None
    networks = SharedNetworks(rng, pool)
    order = [u for u in users if u.scenario_free]
    rng.shuffle(order)
    n = len(users)
    want = {
        "cellular": round(world.cellular_share * n),
        "vpn": round(world.vpn_share * n),
        "corporate": round(world.corporate_share * n),
    }
    workers: list[User] = []
    for user in order:
        if want["cellular"] > 0 and user.phone is not None:
            want["cellular"] -= 1
            user.carrier_pool = networks.carrier_pool(user.home)
            user.p_phone = rng.uniform(0.7, 0.95)
            user.p_wifi = rng.uniform(0.05, 0.25)
        elif want["vpn"] > 0:
            want["vpn"] -= 1
            provider = rng.randrange(VPN_PROVIDERS)
            countries = [user.country] if rng.random() < 0.5 else []
            options = [c for c in VPN_EXIT_COUNTRIES if c != user.country]
            countries += rng.sample(options, k=rng.choice((1, 1, 2)))
            exits = [networks.vpn_exit(provider, c) for c in countries]
            user.vpn_exits = tuple((e.city, e.ips) for e in exits if e is not None)
            user.vpn_always = bool(user.vpn_exits)
        elif want["corporate"] > 0:
            want["corporate"] -= 1
            workers.append(user)
    for index, office in _offices(rng, pool, workers, world.office_size).items():
        user = users[index]
        user.office = office
        user.work_device = _work_device(rng, user, office)
    borrowers = rng.sample(users, k=round(world.borrowed_share * n))
    for user in borrowers:
        user.borrow_rate = rng.uniform(0.02, 0.08)
    return networks
