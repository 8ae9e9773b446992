"""Attack episodes: account takeovers, session hijacks, credential stuffing, malware.

Each episode is a short burst of events labelled with its attack type on every event.
Attacks start after the first week so that victims have a history to deviate from.
The world sets the mix of episode types and the attackers' skill: how well they
copy the victim's time zone, language, browser and hours.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from risk_engine.offline.labels import OWNER_ROUTINE
from risk_engine.offline.simulate.benign import SessionRecord
from risk_engine.offline.simulate.core import DAY, HOUR, Clock, Emitter, body, hex_id
from risk_engine.offline.simulate.geo import City, CityPool, Network
from risk_engine.offline.simulate.networks import VPN_PROVIDERS, SharedNetworks
from risk_engine.offline.simulate.profiles import (
    SCREENS,
    Device,
    User,
    desktop_device,
    language_of,
    pick,
    user_agent,
)
from risk_engine.offline.simulate.world import ATTACK_TYPES, World

# Typical events per episode (used to meet the attack fraction).
EXPECTED_SIZE = {
    "foreign_takeover": 3.6,
    "in_country_takeover": 3.6,
    "targeted_takeover": 3.4,
    "session_hijack": 1.9,
    "credential_stuffing": 32.0,
    "compromised_device": 2.9,
    "vpn_takeover": 3.6,
}


@dataclass(frozen=True)
class Tradecraft:
    """What an attacker of a skill level gets right (``mixed`` is the original simulator)."""

    odd_hours: float  # share of takeovers at the victim's least active hours
    locale: tuple[float, float, float]  # weights: attacker's place, victim's, UTC / en-US
    copies_browser: bool  # a targeted attacker matches version and screen exactly
    malware_by_day: float  # share of compromised-device episodes at usual hours


TRADECRAFT = {
    "naive": Tradecraft(0.85, (70.0, 10.0, 20.0), False, 0.0),
    "mixed": Tradecraft(0.6, (45.0, 35.0, 20.0), False, 0.0),
    "skilled": Tradecraft(0.2, (10.0, 85.0, 5.0), True, 0.5),
}
ATTACKS_START_DAY = 7
# What malware on the victim's device does by day that the victim does every day.
ROUTINE_ACTIONS = frozenset({"login", "view_account"})
STUFFING_MIN_ACCOUNTS = 10

TAKEOVER_PLANS = (
    ("add_payee", "transfer"),
    ("view_account", "add_payee", "transfer"),
    ("view_account", "add_payee", "transfer", "transfer"),
    ("change_email", "change_mfa"),
    ("view_account", "change_email", "add_payee", "transfer"),
    ("transfer",),
    ("change_password", "change_email"),
)
HIJACK_PLANS = (
    ("transfer",),
    ("add_payee", "transfer"),
    ("change_email",),
    ("change_email", "change_mfa"),
    ("add_payee",),
    ("view_account", "add_payee", "transfer"),
)
MALWARE_PLANS = (
    ("export_data",),
    ("create_api_key", "export_data"),
    ("grant_role",),
    ("change_mfa", "create_api_key"),
    ("transfer",),
    ("view_account", "transfer"),
    ("export_data", "change_mfa", "create_api_key"),
)
# Stuffing tools rotate through lists of common, often dated, User-Agents.
_STUFFING_BROWSERS = (
    ("chrome", "windows"),
    ("chrome", "mac"),
    ("chrome", "linux"),
    ("firefox", "windows"),
    ("edge", "windows"),
    ("safari", "mac"),
)


def _key24(ip: str) -> int:
    a, b, c, _ = (int(part) for part in ip.split("."))
    return (a << 16) | (b << 8) | c


def _large(victim: User, rng: random.Random, low: float, high: float) -> float:
    """A transfer far above the victim's habits, sometimes a round figure."""
    typical = victim.amount(rng, z=0.0)
    value = max(victim.amount(rng, z=rng.uniform(2.3, 3.5)), typical * rng.uniform(low, high))
    if rng.random() < 0.4:
        step = 1000.0 if value >= 5000 else 100.0
        value = max(step, round(value / step) * step)
    return round(value, 2)


class AttackPlanner:
    """Schedules attack episodes per day so that about `fraction` of events are attacks."""

    def __init__(
        self,
        rng: random.Random,
        pool: CityPool,
        clock: Clock,
        emitter: Emitter,
        users: Sequence[User],
        *,
        fraction: float,
        benign_per_day: float,
        world: World | None = None,
        networks: SharedNetworks | None = None,
    ) -> None:
        self.rng, self.pool, self.clock, self.emitter = rng, pool, clock, emitter
        self.users = users
        world = world or World()
        self.weights = world.attack_weights()
        self.craft = TRADECRAFT[world.attacker_skill]
        self.networks = networks
        days = clock.days
        # After the first week; a shorter run keeps its first half free of attacks.
        self.first_day = ATTACKS_START_DAY if days > ATTACKS_START_DAY else max(1, days // 2)
        attack_days = days - self.first_day
        self.daily_budget = 0.0
        self.forced: dict[int, list[str]] = {}
        if fraction > 0 and attack_days > 0:
            share = fraction / (1.0 - fraction)
            self.daily_budget = share * benign_per_day * days / attack_days
            # One episode of every type first, spread over the attack period.
            order = [k for k, w in zip(ATTACK_TYPES, self.weights, strict=True) if w > 0]
            rng.shuffle(order)
            for i, kind in enumerate(order):
                day = self.first_day + i * attack_days // len(order)
                self.forced.setdefault(day, []).append(kind)
        self.carry = 0.0
        self.next_kind = self._draw()
        self.attacked_today: set[int] = set()

    def _draw(self) -> str:
        return self.rng.choices(ATTACK_TYPES, weights=self.weights)[0]

    def run_day(self, day: int, sessions: Sequence[SessionRecord]) -> None:
        """Generate the day's attack episodes."""
        if day < self.first_day or self.daily_budget <= 0:
            return
        self.attacked_today = set()
        self.carry += self.daily_budget
        for kind in self.forced.get(day, ()):
            self.carry -= self.episode(kind, day, sessions)
        failures = 0
        while self.carry >= EXPECTED_SIZE[self.next_kind] / 2 and failures < 8:
            size = self.episode(self.next_kind, day, sessions)
            self.next_kind = self._draw()
            if size == 0:
                failures += 1
            self.carry -= size

    def episode(self, kind: str, day: int, sessions: Sequence[SessionRecord]) -> int:
        """One episode of the given type; returns how many events it produced."""
        if kind == "session_hijack":
            return self._session_hijack(sessions)
        if kind == "credential_stuffing":
            return self._credential_stuffing(day)
        if kind == "compromised_device":
            return self._compromised_device(day)
        if kind == "targeted_takeover":
            return self._targeted_takeover(day)
        if kind == "vpn_takeover":
            return self._vpn_takeover(day)
        return self._takeover(kind, day)

    # -- helpers -------------------------------------------------------------------

    def _victim(self, day: int, *, needs_other_city: bool = False) -> User | None:
        rng, midnight = self.rng, self.clock.utc_midnight(day)
        for _ in range(80):
            user = rng.choice(self.users)
            if not self._eligible(user, midnight):
                continue
            if needs_other_city and not any(
                user.home.km_to(c) >= 150.0 for c in self.pool.by_country[user.country]
            ):
                continue
            self.attacked_today.add(user.index)
            return user
        return None

    def _eligible(self, user: User, midnight: int) -> bool:
        """Has a history, is not attacked yet today and is not around a trip."""
        if user.events < 3 or user.index in self.attacked_today:
            return False
        trip = user.trip
        return trip is None or not (trip.depart_out - 2 * DAY <= midnight <= trip.arrive_back + DAY)

    def _at_hour(self, victim: User, day: int, hour: float) -> int:
        midnight = self.clock.local_midnight(victim.home.time_zone, day)
        return midnight + int(hour * HOUR) + self.rng.randrange(3600)

    def _odd_time(self, victim: User, day: int) -> int:
        return self._at_hour(victim, day, self.rng.choice(victim.odd_hours()))

    def _usual_time(self, victim: User, day: int) -> int:
        weekend = self.clock.weekday(day) >= 5
        midnight = self.clock.local_midnight(victim.home.time_zone, day)
        return midnight + victim.local_seconds(self.rng, weekend)

    def _emit_plan(
        self,
        kind: str,
        victim: User,
        ts: int,
        ip: str,
        device: dict[str, str] | None,
        plan: tuple[str, ...],
        *,
        session_id: str | None = None,
        login: bool = True,
        fail_first: bool = False,
        amount_range: tuple[float, float] = (6.0, 25.0),
        routine: frozenset[str] = frozenset(),
    ) -> int:
        """Emit an episode: optional failed login, login, then the plan's actions.

        ``routine``: the actions (login included) labelled ``owner_routine``, the same
        as the victim's own (labels.OWNER_ROUTINE).
        """
        rng, add, uid = self.rng, self.emitter.add, victim.uid
        emitted = 0
        if fail_first:
            failed = body(uid, "login", ip, None, dict(device) if device else None)
            failed["success"] = False
            add(ts, failed, kind, kind)
            ts += rng.randint(8, 90)
            emitted += 1
        if login:
            session_id = f"s-{hex_id(rng)}"
            event = body(uid, "login", ip, session_id, dict(device) if device else None)
            event["success"] = True
            add(ts, event, kind, OWNER_ROUTINE if "login" in routine else kind)
            emitted += 1
        for action in plan:
            ts += rng.randint(15, 150)
            event = body(uid, action, ip, session_id, dict(device) if device else None)
            if action == "transfer":
                event["amount"] = _large(victim, rng, *amount_range)
                event["currency"] = victim.currency
            add(ts, event, kind, OWNER_ROUTINE if action in routine else kind)
            emitted += 1
        return emitted

    def _other_network(self, victim: User, city: City) -> Network | None:
        own = {_key24(ip) for ip in victim.home_ips}
        if victim.work_ip:
            own.add(_key24(victim.work_ip))
        own.update(n.key24 for n in victim.carrier_nets)
        for _ in range(30):
            net = city.random_network(self.rng)
            if net.key24 not in own:
                return net
        return None

    # -- attack types ----------------------------------------------------------------

    def _takeover(self, kind: str, day: int) -> int:
        """foreign_takeover / in_country_takeover: a stranger's browser, somewhere else."""
        rng = self.rng
        foreign = kind == "foreign_takeover"
        victim = self._victim(day, needs_other_city=not foreign)
        if victim is None:
            return 0
        if foreign:
            city = self.pool.far_city(rng, victim.home, min_km=300.0, same_country=False)
        else:
            city = self.pool.far_city(rng, victim.home, min_km=150.0, same_country=True)
        if city is None:
            return 0
        craft = self.craft
        odd = rng.random() < craft.odd_hours
        ts = self._odd_time(victim, day) if odd else self._usual_time(victim, day)
        if not self.clock.inside(ts, HOUR):
            return 0
        if foreign:
            zone = rng.choices((city.time_zone, victim.home.time_zone, "UTC"), craft.locale)[0]
            language = rng.choices(
                (language_of(city.country, rng), victim.language, "en-US"), craft.locale
            )[0]
        elif craft.copies_browser:
            zone, language = victim.home.time_zone, victim.language
        else:
            zone, language = city.time_zone, language_of(city.country, rng)
        device = self._stranger_device(victim, zone, language, with_id=rng.random() < 0.7)
        ip = city.random_network(rng).host(rng)
        plan = rng.choice(TAKEOVER_PLANS)
        return self._emit_plan(kind, victim, ts, ip, device, plan, fail_first=rng.random() < 0.2)

    def _stranger_device(
        self, victim: User, zone: str, language: str, *, with_id: bool
    ) -> dict[str, str]:
        device: Device = victim.primary
        for _ in range(10):
            device = desktop_device(
                self.rng,
                kind="desktop",
                zone=zone,
                language=language,
                mac_share=0.25,
                device_id="new" if with_id else None,
            )
            if device.user_agent != victim.primary.user_agent:
                break
        return device.payload()

    def _targeted_takeover(self, day: int) -> int:
        """From the victim's own city, a look-alike browser, a different network."""
        rng = self.rng
        victim = self._victim(day)
        if victim is None:
            return 0
        net = self._other_network(victim, victim.home)
        ts = self._usual_time(victim, day)
        if net is None or not self.clock.inside(ts, HOUR):
            return 0
        real = victim.primary
        if self.craft.copies_browser:
            major, minor, screen = real.major, real.minor, real.screen
        else:
            if real.family == "safari":
                major, minor = real.major, max(0, real.minor + rng.choice((0, -1, 1)))
            else:
                major, minor = real.major + rng.choice((0, 0, -1, 1, -2)), real.minor
            screen = real.screen if rng.random() < 0.5 else pick(rng, SCREENS[real.system])
        look_alike = Device(
            hex_id(rng) if rng.random() < 0.5 else None,
            "desktop",
            real.family,
            real.system,
            major,
            minor,
            real.timezone,
            real.language,
            screen,
        )
        plan: tuple[str, ...] = ("add_payee", "transfer")
        if rng.random() < 0.4:
            plan = ("view_account", *plan)
        return self._emit_plan(
            "targeted_takeover",
            victim,
            ts,
            net.host(rng),
            look_alike.payload(),
            plan,
            fail_first=rng.random() < 0.15,
            amount_range=(3.0, 12.0),
        )

    def _session_hijack(self, sessions: Sequence[SessionRecord]) -> int:
        """The victim's live session id and device, replayed from another country."""
        rng = self.rng
        if not sessions:
            return 0
        for _ in range(40):
            record = rng.choice(sessions)
            victim = self.users[record.user]
            if not self._eligible(victim, record.last_ts):
                continue
            ts = record.last_ts + rng.randint(120, 1200)
            if not self.clock.inside(ts, HOUR):
                continue
            city = self.pool.far_city(
                rng,
                record.city,
                min_km=1500.0,
                same_country=False,
                avoid_countries=(victim.country,),
            )
            if city is None:
                continue
            self.attacked_today.add(victim.index)
            ip = city.random_network(rng).host(rng)
            plan = rng.choice(HIJACK_PLANS)
            return self._emit_plan(
                "session_hijack",
                victim,
                ts,
                ip,
                record.device,
                plan,
                session_id=record.session_id,
                login=False,
            )
        return 0

    def _credential_stuffing(self, day: int) -> int:
        """One source tries many accounts within minutes; a few passwords work."""
        rng, add = self.rng, self.emitter.add
        kind = "credential_stuffing"
        if len(self.users) < STUFFING_MIN_ACCOUNTS:
            return 0
        count = min(len(self.users), rng.randint(STUFFING_MIN_ACCOUNTS, 50))
        targets = rng.sample(list(self.users), count)
        city = self.pool.city_in(rng, rng.choice(self.pool.countries))
        net = city.random_network(rng)
        ips = [net.host(rng) for _ in range(rng.choice((1, 1, 2, 3)))]
        ts = self.clock.utc_midnight(day) + rng.randrange(DAY - 2 * HOUR)
        if not self.clock.inside(ts, 2 * HOUR):
            return 0
        hits = set(rng.sample(range(count), k=max(1, round(count * rng.uniform(0.03, 0.1)))))
        emitted = 0
        for i, victim in enumerate(targets):
            ts += rng.randint(2, 25)
            ip = rng.choice(ips)
            family, system = rng.choice(_STUFFING_BROWSERS)
            major = rng.randint(15, 26) if family == "safari" else rng.randint(100, 143)
            device = {"user_agent": user_agent(family, system, major, rng.randint(0, 6))}
            if i not in hits:
                event = body(victim.uid, "login", ip, None, device)
                event["success"] = False
                add(ts, event, kind, kind)
                emitted += 1
                continue
            session_id = f"s-{hex_id(rng)}"
            event = body(victim.uid, "login", ip, session_id, device)
            event["success"] = True
            add(ts, event, kind, kind)
            follow = rng.choice(("view_account", "view_account", "add_payee", "change_email"))
            after = body(victim.uid, follow, ip, session_id, dict(device))
            add(ts + rng.randint(3, 40), after, kind, kind)
            emitted += 2
        return emitted

    def _compromised_device(self, day: int) -> int:
        """Malware on the victim's own device at home, at night, doing unusual things."""
        rng = self.rng
        victim = self._victim(day)
        if victim is None:
            return 0
        odd = victim.odd_hours()
        night: list[int] = [h for h in (2, 3, 4) if h in odd] or list(odd)
        by_day = self.craft.malware_by_day > 0 and rng.random() < self.craft.malware_by_day
        ts = (
            self._usual_time(victim, day)
            if by_day
            else self._at_hour(victim, day, rng.choice(night))
        )
        if not self.clock.inside(ts, HOUR):
            return 0
        phone = victim.phone
        device = phone if phone is not None and rng.random() < 0.3 else victim.primary
        ip, payload = victim.home_ip(rng), device.payload()
        # By day, on a device the victim was seen on at this address, its login and
        # balance views are the victim's own routine.
        routine = by_day and self.emitter.habitual(victim.uid, payload, ip)
        return self._emit_plan(
            "compromised_device",
            victim,
            ts,
            ip,
            payload,
            rng.choice(MALWARE_PLANS),
            amount_range=(20.0, 80.0),
            routine=ROUTINE_ACTIONS if routine else frozenset(),
        )

    def _vpn_takeover(self, day: int) -> int:
        """Stolen credentials used through a VPN exit in the victim's own country.

        Where the world has commercial VPNs the attacker takes one of their exits,
        which benign VPN users share; otherwise a network of a city of the country.
        """
        rng = self.rng
        victim = self._victim(day)
        if victim is None:
            return 0
        exit_ip: str | None = None
        if self.networks is not None:
            found = self.networks.vpn_exit(rng.randrange(VPN_PROVIDERS), victim.country)
            exit_ip = rng.choice(found.ips) if found is not None else None
        if exit_ip is None:
            city = self.pool.city_in(rng, victim.country)
            exit_ip = city.random_network(rng).host(rng)
        craft = self.craft
        odd = rng.random() < craft.odd_hours
        ts = self._odd_time(victim, day) if odd else self._usual_time(victim, day)
        if not self.clock.inside(ts, HOUR):
            return 0
        zone, language = rng.choices(
            (
                ("UTC", "en-US"),
                (victim.home.time_zone, victim.language),
                ("UTC", victim.language),
            ),
            craft.locale,
        )[0]
        device = self._stranger_device(victim, zone, language, with_id=rng.random() < 0.6)
        plan = rng.choice(TAKEOVER_PLANS)
        return self._emit_plan(
            "vpn_takeover", victim, ts, exit_ip, device, plan, fail_first=rng.random() < 0.2
        )
