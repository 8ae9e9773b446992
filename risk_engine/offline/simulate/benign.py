"""Legitimate activity: users' daily sessions and the benign noise scenarios.

Benign noise is what makes a behavioral model raise false alarms: a browser update,
a new phone, a roaming phone, a trip abroad, a VPN, cleared cookies and mistyped
passwords. Each is given to a few % of users and labelled on the events it produces.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from risk_engine.offline.simulate.core import DAY, HOUR, Clock, Emitter, body, hex_id, poisson
from risk_engine.offline.simulate.geo import City, CityPool
from risk_engine.offline.simulate.networks import (
    AT_OFFICE,
    CARRIER_AWAY_SHARE,
    OFFICE_END,
    OFFICE_START,
    borrowed_device,
)
from risk_engine.offline.simulate.profiles import (
    COUNTRIES,
    Change,
    Device,
    Trip,
    User,
    phone_device,
)
from risk_engine.offline.simulate.world import World

BENIGN_SCENARIOS = (
    "browser_upgrade",
    "new_phone",
    "mobile_ip_churn",
    "plane_trip",
    "vpn_user",
    "cleared_cookies",
    "typo",
)
# Share of users given each scenario (typos also happen rarely to everyone).
SCENARIO_SHARE = {
    "browser_upgrade": 0.04,
    "new_phone": 0.03,
    "mobile_ip_churn": 0.04,
    "plane_trip": 0.03,
    "vpn_user": 0.03,
    "cleared_cookies": 0.03,
    "typo": 0.05,
}
VPN_COUNTRIES = ("NL", "DE", "SE", "CH", "GB", "US", "SG", "CA", "FR", "RO", "ES")

# Actions after the login of a session: (action, weight) for everyone, plus admin extras.
ACTIONS = (
    ("view_account", 0.64),
    ("transfer", 0.24),
    ("add_payee", 0.05),
    ("change_password", 0.01),
    ("change_email", 0.004),
    ("change_mfa", 0.004),
)
ADMIN_ACTIONS = (("grant_role", 0.03), ("export_data", 0.04), ("create_api_key", 0.02))
ACTION_COUNTS = (0.3, 0.3, 0.18, 0.11, 0.07, 0.04)  # P(0..5 actions after the login)
MEAN_SESSION_EVENTS = 1 + sum(k * p for k, p in enumerate(ACTION_COUNTS))
_ACTION_NAMES = tuple(a for a, _ in ACTIONS)
_ACTION_CUM = tuple(sum(w for _, w in ACTIONS[: i + 1]) for i in range(len(ACTIONS)))
_ADMIN_NAMES = _ACTION_NAMES + tuple(a for a, _ in ADMIN_ACTIONS)
_ADMIN_CUM = _ACTION_CUM + tuple(
    _ACTION_CUM[-1] + sum(w for _, w in ADMIN_ACTIONS[: i + 1]) for i in range(len(ADMIN_ACTIONS))
)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A legitimate session of the day, kept for session-hijack attacks."""

    user: int
    session_id: str
    device: dict[str, str]
    city: City
    last_ts: int


def _flight_seconds(rng: random.Random, km: float) -> int:
    # Cruise at 650-800 km/h plus 2-3.5 h of airports, so the implied speed stays low.
    return int((km / rng.uniform(650.0, 800.0) + rng.uniform(2.0, 3.5)) * HOUR)


def _make_trip(
    rng: random.Random, pool: CityPool, clock: Clock, user: User, world: World
) -> Trip | None:
    if clock.days < 8:
        return None
    domestic = rng.random() < world.domestic_trip_share
    far = world.domestic_trip_km if domestic else 1000.0
    dest = pool.far_city(rng, user.home, min_km=far, same_country=domestic)
    if dest is None:
        dest = pool.far_city(rng, user.home, min_km=1000.0, same_country=False)
    if dest is None:
        return None
    km = user.home.km_to(dest)
    day = rng.randint(2, max(2, clock.days - 6))
    depart_out = clock.local_midnight(user.home.time_zone, day) + int(rng.uniform(7, 19) * HOUR)
    arrive_out = depart_out + _flight_seconds(rng, km)
    stay = rng.uniform(2.0, 6.0) * DAY
    latest = clock.end_ts - 18 * HOUR
    back_flight = _flight_seconds(rng, km)
    depart_back = min(arrive_out + int(stay), latest - back_flight)
    if depart_back - arrive_out < DAY:
        return None
    networks = [dest.random_network(rng) for _ in range(rng.choice((1, 2)))]
    ips = tuple(net.host(rng) for net in networks for _ in range(rng.choice((1, 2))))
    carried = [d for d in (user.phone, user.primary) if d is not None and d.kind != "desktop"]
    if not carried:  # no phone, only a desktop: let the computer be a laptop that travels
        carried = [replace(user.primary, kind="laptop")]
    devices = tuple(replace(d, timezone=dest.time_zone) for d in carried)
    return Trip(
        dest=dest,
        ips=ips,
        devices=devices,
        depart_out=depart_out,
        arrive_out=arrive_out,
        depart_back=depart_back,
        arrive_back=depart_back + back_flight,
        landings=[
            arrive_out + int(rng.uniform(0.4, 3.0) * HOUR),
            depart_back + back_flight + int(rng.uniform(0.4, 3.0) * HOUR),
        ],
    )


def _quota(rng: random.Random, users: int, share: float) -> int:
    if users >= 30:
        return max(1, round(share * users))
    return sum(rng.random() < share for _ in range(users))


def assign_scenarios(
    rng: random.Random, pool: CityPool, clock: Clock, users: list[User], world: World
) -> None:
    """Give each benign scenario to its share of users (disjoint where possible).

    The world sets the share of travellers and of their trips that stay in-country.
    """
    order = list(range(len(users)))
    rng.shuffle(order)
    taken: set[int] = set()
    change_days = (min(2, clock.days - 1), max(min(2, clock.days - 1), clock.days - 3))
    for scenario in BENIGN_SCENARIOS:
        share = world.trip_share if scenario == "plane_trip" else SCENARIO_SHARE[scenario]
        want = _quota(rng, len(users), share)
        for index in order:
            if want <= 0:
                break
            user = users[index]
            if index in taken or not _suits(user, scenario):
                continue
            if not _apply(rng, pool, clock, user, scenario, change_days, world):
                continue
            user.rate = max(user.rate, 1.5)  # so the scenario actually shows up
            taken.add(index)
            want -= 1


def _suits(user: User, scenario: str) -> bool:
    if scenario == "browser_upgrade":  # Safari updates with the OS, not on its own
        return user.primary.family != "safari"
    if scenario in ("new_phone", "mobile_ip_churn"):
        return user.phone is not None
    return True


def _apply(
    rng: random.Random,
    pool: CityPool,
    clock: Clock,
    user: User,
    scenario: str,
    change_days: tuple[int, int],
    world: World,
) -> bool:
    if scenario in ("browser_upgrade", "new_phone", "cleared_cookies"):
        user.change = Change(scenario, rng.randint(*change_days))
    elif scenario == "mobile_ip_churn":
        near = list(pool.nearby(user.home, 150.0))
        rng.shuffle(near)
        user.churn_cities = (user.home, *near[:6])
        user.p_phone = max(user.p_phone, 0.6)
        user.p_wifi = min(user.p_wifi, 0.3)
    elif scenario == "plane_trip":
        trip = _make_trip(rng, pool, clock, user, world)
        if trip is None:
            return False
        user.trip = trip
    elif scenario == "vpn_user":
        options = [c for c in VPN_COUNTRIES if c != user.country and c in pool.by_country]
        exits = []
        for country in rng.sample(options, k=min(len(options), rng.choice((1, 1, 2)))):
            city = pool.city_in(rng, country)
            net = city.random_network(rng)
            exits.append((city, tuple(net.host(rng) for _ in range(rng.randint(1, 4)))))
        user.vpn_exits = tuple(exits)
        user.vpn_rate = rng.uniform(0.25, 0.6)
    elif scenario == "typo":
        user.typo_rate = rng.uniform(0.08, 0.18)
    return True


def _apply_change(rng: random.Random, user: User) -> None:
    change = user.change
    assert change is not None
    if change.kind == "browser_upgrade":
        user.primary = user.primary.upgraded()
    elif change.kind == "cleared_cookies":
        user.primary = replace(user.primary, id=hex_id(rng))
    elif change.kind == "new_phone" and user.phone is not None:
        info = COUNTRIES[user.country]
        old = user.phone
        for _ in range(20):  # a new phone usually comes with a newer browser
            new = phone_device(
                rng,
                zone=old.timezone,
                language=old.language,
                iphone_share=info.iphone_share,
                prefer=old.system,
            )
            if new.user_agent != old.user_agent:
                break
        user.phone = new


def _carrier_address(rng: random.Random, user: User) -> tuple[City, str]:
    """A fresh carrier address for this session, often placed in a nearby town."""
    pool = user.carrier_pool
    if rng.random() >= CARRIER_AWAY_SHARE:
        at_home = [entry for entry in pool if entry[0] is user.home]
        if at_home:
            return rng.choice(at_home)
    return rng.choice(pool)


def _action(rng: random.Random, admin: bool) -> str:
    if admin:
        return rng.choices(_ADMIN_NAMES, cum_weights=_ADMIN_CUM)[0]
    return rng.choices(_ACTION_NAMES, cum_weights=_ACTION_CUM)[0]


class DayGenerator:
    """Generates users' legitimate sessions for one simulation day at a time."""

    def __init__(self, rng: random.Random, clock: Clock, emitter: Emitter) -> None:
        self.rng = rng
        self.clock = clock
        self.emitter = emitter
        self.sessions: list[SessionRecord] = []

    def start_day(self) -> None:
        """Forget the previous day's sessions."""
        self.sessions = []

    def user_day(self, user: User, day: int) -> None:
        """All of one user's sessions on their local day `day`."""
        rng, clock = self.rng, self.clock
        trip = user.trip
        zone = user.home.time_zone
        if trip is not None:
            noon = clock.local_midnight(zone, day) + 12 * HOUR
            if trip.where(noon) == "away":
                zone = trip.dest.time_zone
        midnight = clock.local_midnight(zone, day)
        change = user.change
        if change is not None and change.day == day:
            _apply_change(rng, user)
        weekend = clock.weekday(day) >= 5
        factor = user.weekend_factor if weekend else user.weekday_factor
        count = poisson(rng, user.rate * factor / MEAN_SESSION_EVENTS)
        starts = [midnight + user.local_seconds(rng, weekend) for _ in range(count)]
        if trip is not None:
            while trip.landings and trip.landings[0] < midnight + DAY:
                starts.append(trip.landings.pop(0))
        starts.sort()
        for ts in starts:
            if clock.inside(ts, HOUR):
                self._session(user, day, ts, weekend, midnight)

    def _session(self, user: User, day: int, ts: int, weekend: bool, midnight: int) -> None:
        rng = self.rng
        scenario: str | None = None
        city = user.home
        trip = user.trip
        where = trip.where(ts) if trip is not None else "home"
        if where == "travel":
            return
        phone = user.phone
        on_phone = False
        context = "home"
        hour = (ts - midnight) / HOUR
        if trip is not None and where == "away":
            device = rng.choice(trip.devices)
            ip = rng.choice(trip.ips)
            city = trip.dest
            scenario = "plane_trip"
            context = "trip_domestic" if city.country == user.country else "trip_abroad"
        elif user.borrow_rate and rng.random() < user.borrow_rate:
            device = borrowed_device(rng, user)
            ip = (
                user.home_ip(rng) if rng.random() < 0.5 else user.home.random_network(rng).host(rng)
            )
            context = "borrowed_device"
        elif user.vpn_always:
            device, on_phone = user.primary, False
            if phone is not None and rng.random() < user.p_phone:
                device, on_phone = phone, True
            city, ips = rng.choice(user.vpn_exits)
            ip = rng.choice(ips)
            context = "vpn"
        elif (
            user.office is not None
            and not weekend
            and OFFICE_START <= hour < OFFICE_END
            and rng.random() < AT_OFFICE
        ):
            device = user.work_device or user.primary
            if phone is not None and rng.random() < 0.3:
                device, on_phone = phone, True
            city, ip = user.office.egress.city, rng.choice(user.office.egress.ips)
            context = "corporate"
        elif phone is not None and rng.random() < user.p_phone:
            device, on_phone = phone, True
            if rng.random() < user.p_wifi:
                ip = user.home_ip(rng)
            elif user.churn_cities:
                weights = [0.6] + [0.4] * (len(user.churn_cities) - 1)
                city = rng.choices(user.churn_cities, weights=weights)[0]
                ip = city.random_network(rng).host(rng)
                scenario = "mobile_ip_churn"
                context = "cellular"
            elif user.carrier_pool:
                city, ip = _carrier_address(rng, user)
                context = "cellular"
            else:
                ip = rng.choice(user.carrier_nets).host(rng)
                context = "cellular"
        else:
            device = user.primary
            if user.vpn_exits and rng.random() < user.vpn_rate:
                city, ips = rng.choice(user.vpn_exits)
                ip = rng.choice(ips)
                scenario = "vpn_user"
                context = "vpn"
            elif user.work_ip and not weekend and 9 <= hour < 17.5 and rng.random() < 0.7:
                ip = user.work_ip
                context = "work"
            else:
                ip = user.home_ip(rng)
        back_home = trip is not None and where == "home" and ts >= trip.arrive_back
        if trip is not None and back_home and not trip.back_labelled:
            trip.back_labelled = True  # the first session home still belongs to the trip
            scenario = "plane_trip"
        change = user.change
        # A persistent change is labelled on the first day the changed device is used.
        changed = change is not None and on_phone == (change.kind == "new_phone")
        if change is not None and changed and scenario is None and day >= change.day:
            if change.label_day is None:
                change.label_day = day
            if change.label_day == day:
                scenario = change.kind
                if on_phone:  # the new phone is first set up at home
                    ip = user.home_ip(rng)
                    city, context = user.home, "home"
        self._emit_session(user, ts, device, ip, city, scenario, context)

    def _emit_session(
        self,
        user: User,
        ts: int,
        device: Device,
        ip: str,
        city: City,
        scenario: str | None,
        context: str,
    ) -> None:
        rng, add = self.rng, self.emitter.add
        uid = user.uid
        payload = device.payload()
        emitted = 0
        if scenario is None and rng.random() < user.typo_rate:
            failed = body(uid, "login", ip, None, dict(payload))
            failed["success"] = False
            add(ts, failed, None, "typo", context)
            ts += rng.randint(4, 55)
            emitted += 1
            scenario = "typo"
            login_scenario: str | None = "typo"
        else:
            login_scenario = scenario
        session_id = f"s-{hex_id(rng)}"
        login = body(uid, "login", ip, session_id, dict(payload))
        login["success"] = True
        add(ts, login, None, login_scenario, context)
        emitted += 1
        action_scenario = None if scenario == "typo" else scenario
        n_actions = rng.choices(range(6), weights=ACTION_COUNTS)[0]
        for _ in range(n_actions):
            ts += int(min(1500.0, rng.lognormvariate(4.7, 0.9))) + 5
            if ts >= self.clock.end_ts:
                break
            action = _action(rng, user.admin)
            event = body(uid, action, ip, session_id, dict(payload))
            if action == "transfer":
                event["amount"] = user.amount(rng)
                event["currency"] = user.currency
            add(ts, event, None, action_scenario, context)
            emitted += 1
        user.events += emitted
        user.last_ts = ts
        self.sessions.append(SessionRecord(user.index, session_id, payload, city, ts))
