"""Attack synthesis on the deployment's own log: labelled attacks built from its real users.

A bank without labels has nothing to teach the supervised model, and a model
taught on the simulator's attacks learns the simulator's world. The synthesizer
reads the bank's own log and writes attacks into it: each victim is a real user,
each attack is built from what the log showed of that user BEFORE the attack (the
devices, networks, cities, hours, actions and amounts), and the attacker's
infrastructure is other users' addresses and User-Agents from the same log. The
injected events are replayed with the real ones, interleaved by timestamp,
through the same engine (``Engine.replay``), so the model learns attacks in the
deployment's own context.

Kinds, and the attacker knowledge each needs:

=====================  =========  ===================================================
kind                   knowledge  what the attacker uses
=====================  =========  ===================================================
new_country_takeover   naive      another user's address in a country the victim never
                                  used, that user's browser, any hour
session_hijack         naive      the victim's live session and device, replayed from
                                  another user's address in another country
credential_stuffing    naive      one other user's network, many accounts in minutes,
                                  rotating User-Agents, a few logins succeed
vpn_takeover           vpn        an address in the victim's country on a network the
                                  victim never used, another user's browser
targeted_takeover      targeted   the victim's city (else country), another network, a
                                  browser of the victim's family and OS family with the
                                  victim's time zone and language, the victim's usual
                                  hours
compromised_device     device     the victim's own device and home address, at the
                                  victim's quiet hours: a payee added and paid, data
                                  exported, MFA changed
=====================  =========  ===================================================

The judge is kept apart: this module shares no code with the simulator's attack
generators (``simulate.attacks``), whose attacks stay the independent test
of a model trained on these.

**Replay rule.** An injected event is replayed as a refused one
(``trusted=False, refused=True``), as training treats every labelled attack: it
teaches the victim's profile no place, network, address, hour, action, amount or
session; the attacker's device is remembered only as an untrusted device (the
victim's own device, in the compromised-device kind, keeps its trust and its
attributes). It still counts as activity (the victim's recent events, a failed
login as a failure) and in the burst windows of its address and network, as a
real attack that was stepped up and failed would. A real attack that got through
would have taught the profile; training never assumes one did.
"""

from __future__ import annotations

import bisect
import math
import random
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from risk_engine.errors import ConfigurationError
from risk_engine.features.observation import zone
from risk_engine.geo import GeoLocator
from risk_engine.offline.labels import Label
from risk_engine.offline.logs import LogReport, merged_events, write_records
from risk_engine.offline.remote import LogPath
from risk_engine.useragent import parse_user_agent

KINDS: tuple[str, ...] = (
    "new_country_takeover",
    "vpn_takeover",
    "targeted_takeover",
    "session_hijack",
    "credential_stuffing",
    "compromised_device",
)
KNOWLEDGE: tuple[str, ...] = ("naive", "vpn", "targeted", "device")
KNOWLEDGE_OF: dict[str, str] = {
    "new_country_takeover": "naive",
    "session_hijack": "naive",
    "credential_stuffing": "naive",
    "vpn_takeover": "vpn",
    "targeted_takeover": "targeted",
    "compromised_device": "device",
}
# Episodes of each kind, relative; stuffing episodes are large, so they are drawn rarely.
DEFAULT_MIX: dict[str, float] = {
    "new_country_takeover": 1.0,
    "vpn_takeover": 1.0,
    "targeted_takeover": 1.0,
    "session_hijack": 1.0,
    "credential_stuffing": 0.15,
    "compromised_device": 1.0,
}
LABEL_PREFIX = "synthetic:"
SCENARIO = "synthetic"
EVENT_ID_PREFIX = "syn-"
REPLAY_RULE = "refused"
# The victim needs a history to deviate from; the attacker needs one to copy.
MIN_VICTIM_EVENTS = 5
DAY_S = 86400.0
HOUR_S = 3600.0
MAX_ATTEMPTS_PER_EPISODE = 60

TAKEOVER_PLANS: tuple[tuple[str, ...], ...] = (
    ("add_payee", "transfer"),
    ("view_account", "add_payee", "transfer"),
    ("change_email", "change_mfa"),
    ("view_account", "change_email", "add_payee", "transfer"),
    ("export_data",),
    ("change_password", "add_payee", "transfer"),
)
TARGETED_PLANS: tuple[tuple[str, ...], ...] = (
    ("add_payee", "transfer"),
    ("view_account", "add_payee", "transfer"),
)
HIJACK_PLANS: tuple[tuple[str, ...], ...] = (
    ("transfer",),
    ("add_payee", "transfer"),
    ("change_email",),
    ("change_email", "change_mfa"),
    ("view_account", "export_data"),
)
DEVICE_PLANS: tuple[tuple[str, ...], ...] = (
    ("add_payee", "transfer"),
    ("export_data",),
    ("change_mfa",),
    ("add_payee", "transfer", "export_data"),
    ("change_mfa", "add_payee", "transfer"),
    ("export_data", "change_mfa"),
)


@dataclass(frozen=True)
class SynthesisConfig:
    """What to inject: seed, rate (injected events per real event), mix and knowledge."""

    seed: int = 0
    rate: float = 0.01
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    knowledge: tuple[str, ...] = KNOWLEDGE

    def __post_init__(self) -> None:
        if not 0.0 < self.rate <= 0.5:
            raise ConfigurationError(f"attack rate must be in (0, 0.5], got {self.rate}")
        unknown = set(self.mix) - set(KINDS)
        if unknown:
            raise ConfigurationError(
                f"unknown attack kind(s) {sorted(unknown)}; known: {', '.join(KINDS)}"
            )
        if any(not math.isfinite(w) or w < 0.0 for w in self.mix.values()):
            raise ConfigurationError("attack mix weights must be finite and >= 0")
        bad = set(self.knowledge) - set(KNOWLEDGE)
        if bad or not self.knowledge:
            raise ConfigurationError(
                f"attacker knowledge must be among {', '.join(KNOWLEDGE)},"
                f" got {list(self.knowledge)}"
            )
        if not self.kinds:
            raise ConfigurationError("the mix and knowledge leave no attack kind to synthesize")

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds this configuration produces: in the mix with weight, known to the attacker."""
        return tuple(
            k for k in KINDS if self.mix.get(k, 0.0) > 0.0 and KNOWLEDGE_OF[k] in self.knowledge
        )


def parse_mix(text: str) -> dict[str, float]:
    """``kind=weight,...`` -> weights; kinds not named get weight 0."""
    mix = dict.fromkeys(KINDS, 0.0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.partition("=")
        if name not in mix:
            raise ConfigurationError(f"unknown attack kind {name!r}; known: {', '.join(KINDS)}")
        try:
            mix[name] = float(weight) if sep else 1.0
        except ValueError:
            raise ConfigurationError(f"attack mix weight of {name} is not a number") from None
    return mix


# -- what the log shows ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """One real event as the synthesizer keeps it (located, its local hour)."""

    ts: float
    user: str
    ip: str
    network: str
    country: str
    city: str
    time_zone: str
    local_hour: int
    device: dict[str, str] | None
    device_key: str
    session_id: str | None
    action: str
    amount: float | None
    currency: str | None


@dataclass
class LogIndex:
    """The log's users and histories, and its addresses and browsers as attacker stock."""

    by_user: dict[str, list[Seen]] = field(default_factory=dict)
    stamps: dict[str, list[float]] = field(default_factory=dict)
    # One entry per distinct address: the first event seen from it.
    addresses: list[Seen] = field(default_factory=list)
    by_country: dict[str, list[int]] = field(default_factory=dict)
    by_city: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    # One device payload per distinct User-Agent, with (browser family, OS family).
    agents: list[tuple[dict[str, str], str, str]] = field(default_factory=list)
    amounts: list[float] = field(default_factory=list)
    currencies: Counter[str] = field(default_factory=Counter)
    event_ids: set[str] = field(default_factory=set)
    events: int = 0
    first_ts: float = math.inf
    last_ts: float = -math.inf

    def history(self, user: str, before: float) -> list[Seen]:
        """The user's events strictly before ``before``."""
        return self.by_user[user][: bisect.bisect_left(self.stamps[user], before)]


def _local_hour(ts: float, *zones: str | None) -> int:
    for name in zones:
        tz = zone(name)
        if tz is not None:
            return datetime.fromtimestamp(ts, tz).hour
    return datetime.fromtimestamp(ts, UTC).hour


def index_log(
    paths: Sequence[LogPath | str], geo: GeoLocator, report: LogReport | None = None
) -> LogIndex:
    """Read the logs in time order and keep what attacks are built from."""
    index = LogIndex()
    devices: dict[bytes, dict[str, str]] = {}
    seen_ips: set[str] = set()
    seen_agents: set[str] = set()
    for event in merged_events(paths, report or LogReport()):
        loc = geo.lookup(event.ip)
        payload: dict[str, str] | None = None
        if event.device is not None:
            raw = event.device.model_dump(exclude_none=True)
            key = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
            payload = devices.setdefault(key, raw)
            agent = payload.get("user_agent")
            if agent and agent not in seen_agents:
                seen_agents.add(agent)
                ua = parse_user_agent(agent)
                bare = {k: v for k, v in payload.items() if k != "id"}
                index.agents.append((bare, ua.family, ua.os_family))
        device_key = ""
        if payload is not None:
            device_key = payload.get("id") or payload.get("user_agent") or ""
        ip = str(event.ip)
        seen = Seen(
            ts=event.epoch,
            user=sys.intern(event.user_id),
            ip=sys.intern(ip),
            network=sys.intern(loc.network),
            country=loc.country or "",
            city=loc.city or "",
            time_zone=loc.time_zone or "",
            local_hour=_local_hour(
                event.epoch, loc.time_zone, payload.get("timezone") if payload else None
            ),
            device=payload,
            device_key=device_key,
            session_id=event.session_id,
            action=sys.intern(event.action),
            amount=event.amount,
            currency=event.currency,
        )
        index.by_user.setdefault(seen.user, []).append(seen)
        index.stamps.setdefault(seen.user, []).append(seen.ts)
        if ip not in seen_ips and loc.known and loc.country:
            seen_ips.add(ip)
            index.by_country.setdefault(seen.country, []).append(len(index.addresses))
            if seen.city:
                index.by_city.setdefault((seen.country, seen.city), []).append(len(index.addresses))
            index.addresses.append(seen)
        if event.amount is not None:
            index.amounts.append(event.amount)
        if event.currency:
            index.currencies[event.currency] += 1
        index.event_ids.add(event.event_id)
        index.events += 1
        index.first_ts = min(index.first_ts, seen.ts)
        index.last_ts = max(index.last_ts, seen.ts)
    return index


@dataclass
class Victim:
    """What the log showed of a user before the attack."""

    user: str
    history: list[Seen]
    countries: set[str]
    cities: Counter[tuple[str, str]]
    networks: set[str]
    agents: set[str]
    hours: Counter[int]
    primary: Seen  # an event on the user's most used device
    home: Seen  # an event from the user's most used address
    amounts: list[float]
    currency: str | None

    @classmethod
    def of(cls, user: str, history: list[Seen]) -> Victim:
        devices = Counter(s.device_key for s in history if s.device is not None)
        addresses = Counter(s.ip for s in history)
        top_device = devices.most_common(1)[0][0] if devices else None
        top_ip = addresses.most_common(1)[0][0]
        primary = next(
            (s for s in reversed(history) if s.device is not None and s.device_key == top_device),
            history[-1],
        )
        home = next(s for s in reversed(history) if s.ip == top_ip)
        currencies = Counter(s.currency for s in history if s.currency)
        return cls(
            user=user,
            history=history,
            countries={s.country for s in history if s.country},
            cities=Counter((s.country, s.city) for s in history if s.city),
            networks={s.network for s in history},
            agents={s.device.get("user_agent", "") for s in history if s.device is not None},
            hours=Counter(s.local_hour for s in history),
            primary=primary,
            home=home,
            amounts=[s.amount for s in history if s.amount is not None],
            currency=currencies.most_common(1)[0][0] if currencies else None,
        )

    @property
    def home_city(self) -> tuple[str, str] | None:
        return self.cities.most_common(1)[0][0] if self.cities else None

    @property
    def time_zone(self) -> str | None:
        device_zone = self.primary.device.get("timezone") if self.primary.device else None
        return self.home.time_zone or device_zone


# -- the result -----------------------------------------------------------------------


@dataclass
class Episode:
    """One injected attack: its kind, victim(s), start and events."""

    kind: str
    victims: list[str]
    start: float
    events: list[dict[str, Any]]
    detail: dict[str, Any]


@dataclass
class Synthesis:
    """The injected events (contract bodies, time order), their labels and what they were."""

    config: SynthesisConfig
    episodes: list[Episode]
    real_events: int

    @property
    def events(self) -> list[dict[str, Any]]:
        out = [e for ep in self.episodes for e in ep.events]
        out.sort(key=lambda e: (e["timestamp"], e["event_id"]))
        return out

    @property
    def labels(self) -> dict[str, Label]:
        return {
            e["event_id"]: Label(True, LABEL_PREFIX + ep.kind, SCENARIO)
            for ep in self.episodes
            for e in ep.events
        }

    def summary(self) -> dict[str, Any]:
        """What was injected, for the artifact's envelope and the reports."""
        episodes = Counter(ep.kind for ep in self.episodes)
        events: Counter[str] = Counter()
        for ep in self.episodes:
            events[ep.kind] += len(ep.events)
        starts = [ep.start for ep in self.episodes]
        return {
            "enabled": True,
            "seed": self.config.seed,
            "rate": self.config.rate,
            "mix": dict(self.config.mix),
            "knowledge": list(self.config.knowledge),
            "kinds": list(self.config.kinds),
            "label_prefix": LABEL_PREFIX,
            "replay_rule": REPLAY_RULE,
            "real_events": self.real_events,
            "injected_events": sum(events.values()),
            "episodes_by_kind": dict(sorted(episodes.items())),
            "events_by_kind": dict(sorted(events.items())),
            "victims": len({v for ep in self.episodes for v in ep.victims}),
            "window": [_rfc3339(min(starts)), _rfc3339(max(starts))] if starts else [],
        }

    def write_events(self, path: Path) -> Path:
        write_records(path, self.events)
        return path

    def write_labels(self, path: Path, also: dict[str, Label] | None = None) -> Path:
        """The injected labels (and ``also``, e.g. the log's own) in the simulator's format."""
        write_records(
            path,
            (
                {
                    "event_id": event_id,
                    "is_attack": label.is_attack,
                    "attack_type": label.attack_type,
                    "scenario": label.scenario,
                }
                for event_id, label in {**(also or {}), **self.labels}.items()
            ),
        )
        return path


def _rfc3339(ts: float) -> str:
    moment = datetime.fromtimestamp(round(ts), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the synthesizer ------------------------------------------------------------------


class Synthesizer:
    """Builds attack episodes on a LogIndex; seeded: same log, config and seed, same output."""

    def __init__(self, index: LogIndex, config: SynthesisConfig) -> None:
        self.index, self.config = index, config
        self.rng = random.Random(config.seed)
        self.counter = 0
        self.users = sorted(index.by_user)
        # A user is attacked at most once a day, so that episodes do not pile up.
        self.attacked: set[tuple[str, int]] = set()
        span = index.last_ts - index.first_ts
        # Victims need a history first: the attacks begin after a warm-up.
        self.start = index.first_ts + min(7 * DAY_S, span / 4.0)
        self.end = index.last_ts

    # -- driver -----------------------------------------------------------------------

    def run(self) -> Synthesis:
        kinds = self.config.kinds
        weights = [self.config.mix[k] for k in kinds]
        target = max(1, round(self.config.rate * self.index.events))
        episodes: list[Episode] = []
        injected = 0
        if self.index.events and self.end > self.start:
            # One episode of every kind first, then the mix until the rate is met.
            queue = list(kinds)
            failures = 0
            while (queue or injected < target) and failures < 50:
                kind = queue.pop(0) if queue else self.rng.choices(kinds, weights)[0]
                episode = self.episode(kind)
                if episode is None:
                    failures += 1
                    continue
                episodes.append(episode)
                injected += len(episode.events)
        return Synthesis(self.config, episodes, self.index.events)

    def episode(self, kind: str) -> Episode | None:
        for _ in range(MAX_ATTEMPTS_PER_EPISODE):
            built = getattr(self, f"_{kind}")()
            if built is not None:
                assert isinstance(built, Episode)
                return built
        return None

    # -- helpers ----------------------------------------------------------------------

    def _event_id(self) -> str:
        while True:
            self.counter += 1
            event_id = f"{EVENT_ID_PREFIX}{self.config.seed}-{self.counter:07d}"
            if event_id not in self.index.event_ids:
                return event_id

    def _token(self) -> str:
        return f"{self.rng.getrandbits(64):016x}"

    def _moment(self) -> float:
        return self.rng.uniform(self.start, self.end)

    def _victim(self, at: float) -> Victim | None:
        for _ in range(20):
            user = self.rng.choice(self.users)
            day = int(at // DAY_S)
            if (user, day) in self.attacked:
                continue
            history = self.index.history(user, at)
            if len(history) < MIN_VICTIM_EVENTS:
                continue
            return Victim.of(user, history)
        return None

    def _claim(self, user: str, at: float) -> None:
        self.attacked.add((user, int(at // DAY_S)))

    def _at_local_hour(self, victim: Victim, around: float, hour: int) -> float:
        """A moment at ``hour`` local time (the victim's zone) on the day of ``around``."""
        tz = zone(victim.time_zone) or UTC
        local = datetime.fromtimestamp(around, tz)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        moment = midnight + timedelta(hours=hour, seconds=self.rng.randrange(3600))
        return moment.timestamp()

    def _inside(self, ts: float, length: float = HOUR_S) -> bool:
        return self.index.first_ts < ts and ts + length < self.index.last_ts

    def _address(self, candidates: Sequence[int], victim: Victim) -> Seen | None:
        """Another user's address from ``candidates``, on a network the victim never used."""
        for _ in range(20):
            if not candidates:
                return None
            seen = self.index.addresses[self.rng.choice(candidates)]
            if seen.user != victim.user and seen.network not in victim.networks:
                return seen
        return None

    def _their_device(self, owner: Seen, victim: Victim) -> dict[str, str] | None:
        """The browser of the address's user (the attacker's machine looks local), a new cookie."""
        for candidate in (owner.device, *(s.device for s in self.index.by_user[owner.user])):
            if candidate is None or candidate.get("user_agent") in victim.agents:
                continue
            device = {k: v for k, v in candidate.items() if k != "id"}
            if self.rng.random() < 0.7:
                device["id"] = self._token()
            return device
        return None

    def _amount(self, victim: Victim, low: float, high: float) -> float:
        """Far above the victim's habits (the log's amounts when the victim has none)."""
        pool = sorted(victim.amounts or self.index.amounts or [100.0])
        top = pool[min(len(pool) - 1, int(0.9 * len(pool)))]
        value = max(top, 1.0) * self.rng.uniform(low, high)
        if self.rng.random() < 0.4:
            step = 1000.0 if value >= 5000 else 100.0
            value = max(step, round(value / step) * step)
        return round(value, 2)

    def _currency(self, victim: Victim) -> str | None:
        if victim.currency:
            return victim.currency
        common = self.index.currencies.most_common(1)
        return common[0][0] if common else None

    def _emit(
        self,
        victim: Victim,
        ts: float,
        ip: str,
        device: dict[str, str] | None,
        plan: Sequence[str],
        *,
        session_id: str | None = None,
        login: bool = True,
        fail_first: bool = False,
        amounts: tuple[float, float] = (4.0, 20.0),
    ) -> list[dict[str, Any]]:
        """An episode's events: an optional failed login, a login, then the plan."""
        out: list[dict[str, Any]] = []
        payee: str | None = None

        def add(when: float, action: str, **extra: Any) -> None:
            body: dict[str, Any] = {
                "event_id": self._event_id(),
                "timestamp": _rfc3339(when),
                "user_id": victim.user,
                "action": action,
                "ip": ip,
            }
            in_session = extra.pop("session", True)
            if session_id is not None and in_session:
                body["session_id"] = session_id
            if device is not None:
                body["device"] = dict(device)
            body.update(extra)
            out.append(body)

        if fail_first:
            add(ts, "login", success=False, session=False)
            ts += self.rng.randint(8, 90)
        if login:
            session_id = f"s-{self._token()}"
            add(ts, "login", success=True)
        for action in plan:
            ts += self.rng.randint(15, 150)
            extra: dict[str, Any] = {}
            if action == "add_payee":
                payee = f"p-{self._token()}"
                extra["payee"] = payee
            elif action == "transfer":
                extra["amount"] = self._amount(victim, *amounts)
                currency = self._currency(victim)
                if currency:
                    extra["currency"] = currency
                if payee is not None:
                    extra["payee"] = payee
            add(ts, action, **extra)
        return out

    def _episode(
        self, kind: str, victim: Victim, events: list[dict[str, Any]], **detail: Any
    ) -> Episode | None:
        if not events:
            return None
        start = datetime.fromisoformat(events[0]["timestamp"]).timestamp()
        self._claim(victim.user, start)
        return Episode(kind, [victim.user], start, events, detail)

    # -- the kinds --------------------------------------------------------------------

    def _new_country_takeover(self) -> Episode | None:
        at = self._moment()
        victim = self._victim(at)
        if victim is None or not self._inside(at):
            return None
        foreign = [c for c in self.index.by_country if c not in victim.countries]
        if not foreign:
            return None
        country = self.rng.choice(sorted(foreign))
        owner = self._address(self.index.by_country[country], victim)
        device = self._their_device(owner, victim) if owner else None
        if owner is None or device is None:
            return None
        plan = self.rng.choice(TAKEOVER_PLANS)
        events = self._emit(victim, at, owner.ip, device, plan, fail_first=self.rng.random() < 0.2)
        return self._episode("new_country_takeover", victim, events, country=country)

    def _vpn_takeover(self) -> Episode | None:
        at = self._moment()
        victim = self._victim(at)
        if victim is None or not self._inside(at):
            return None
        country = victim.home.country or (victim.home_city or ("", ""))[0]
        owner = self._address(self.index.by_country.get(country, []), victim)
        device = self._their_device(owner, victim) if owner else None
        if owner is None or device is None:
            return None
        plan = self.rng.choice(TAKEOVER_PLANS)
        events = self._emit(victim, at, owner.ip, device, plan, fail_first=self.rng.random() < 0.2)
        return self._episode("vpn_takeover", victim, events, country=country)

    def _targeted_takeover(self) -> Episode | None:
        at = self._moment()
        victim = self._victim(at)
        city = victim.home_city if victim else None
        if victim is None or city is None:
            return None
        owner = self._address(self.index.by_city.get(city, []), victim)
        where = "city"
        if owner is None:
            owner = self._address(self.index.by_country.get(city[0], []), victim)
            where = "country"
        if owner is None or victim.primary.device is None:
            return None
        real = victim.primary.device
        real_ua = parse_user_agent(real.get("user_agent"))
        # A browser of the victim's family on the victim's OS family, from another user.
        same = [
            bare
            for bare, family, os_family in self.index.agents
            if family == real_ua.family and os_family == real_ua.os_family
        ]
        look_alike = dict(self.rng.choice(same)) if same else {"user_agent": real["user_agent"]}
        for name in ("timezone", "language", "platform"):
            if name in real:
                look_alike[name] = real[name]
        if self.rng.random() < 0.5:
            look_alike["id"] = self._token()
        hours, counts = zip(*victim.hours.items(), strict=True)
        hour = self.rng.choices(hours, counts)[0]
        ts = self._at_local_hour(victim, at, hour)
        if not self._inside(ts) or ts <= victim.history[-1].ts:
            return None
        plan = self.rng.choice(TARGETED_PLANS)
        events = self._emit(
            victim,
            ts,
            owner.ip,
            look_alike,
            plan,
            fail_first=self.rng.random() < 0.15,
            amounts=(2.0, 8.0),
        )
        return self._episode("targeted_takeover", victim, events, where=where, hour=hour)

    def _session_hijack(self) -> Episode | None:
        at = self._moment()
        victim = self._victim(at)
        if victim is None:
            return None
        sessions = [s for s in victim.history if s.session_id and s.device is not None]
        if not sessions:
            return None
        last = sessions[-1]
        ts = last.ts + self.rng.randint(120, 1200)
        if not self._inside(ts) or self.index.history(victim.user, ts)[-1] is not last:
            # Another real event came in between: the stolen cookie must still be fresh.
            return None
        abroad = [c for c in self.index.by_country if c != last.country]
        if not abroad:
            return None
        country = self.rng.choice(sorted(abroad))
        owner = self._address(self.index.by_country[country], victim)
        if owner is None:
            return None
        plan = self.rng.choice(HIJACK_PLANS)
        events = self._emit(
            victim, ts, owner.ip, last.device, plan, session_id=last.session_id, login=False
        )
        return self._episode("session_hijack", victim, events, country=country)

    def _credential_stuffing(self) -> Episode | None:
        at = self._moment()
        if not self._inside(at, 2 * HOUR_S) or not self.index.agents:
            return None
        known = [u for u in self.users if self.index.history(u, at)]
        if len(known) < 2:
            return None
        source = self.index.addresses[self.rng.randrange(len(self.index.addresses))]
        network = [a.ip for a in self.index.addresses if a.network == source.network]
        ips = self.rng.sample(network, k=min(len(network), self.rng.choice((1, 1, 2, 3))))
        count = min(len(known), self.rng.randint(10, 40))
        targets = self.rng.sample(known, count)
        share = self.rng.uniform(0.03, 0.1)
        hits = set(self.rng.sample(range(count), k=max(1, round(count * share))))
        events: list[dict[str, Any]] = []
        ts = at
        for i, user in enumerate(targets):
            ts += self.rng.randint(2, 25)
            victim = Victim.of(user, self.index.history(user, ts))
            agent = {"user_agent": self.rng.choice(self.index.agents)[0].get("user_agent", "")}
            ip = self.rng.choice(ips)
            if i not in hits:
                events += self._emit(victim, ts, ip, agent, (), login=False, fail_first=True)
                continue
            follow = self.rng.choice(("view_account", "view_account", "add_payee", "change_email"))
            events += self._emit(victim, ts, ip, agent, (follow,))
        start = at
        for user in targets:
            self._claim(user, start)
        return Episode("credential_stuffing", targets, start, events, {"network": source.network})

    def _compromised_device(self) -> Episode | None:
        at = self._moment()
        victim = self._victim(at)
        if victim is None or victim.primary.device is None:
            return None
        # The quiet hours: those the victim was least active in, at night first.
        least = min(victim.hours.get(h, 0) for h in range(24))
        quiet = [h for h in range(24) if victim.hours.get(h, 0) == least]
        night = [h for h in quiet if h < 6] or quiet
        hour = self.rng.choice(night)
        ts = self._at_local_hour(victim, at, hour)
        if not self._inside(ts) or ts <= victim.history[-1].ts:
            return None
        plan = self.rng.choice(DEVICE_PLANS)
        events = self._emit(
            victim,
            ts,
            victim.home.ip,
            dict(victim.primary.device),
            plan,
            amounts=(10.0, 40.0),
        )
        return self._episode(
            "compromised_device", victim, events, hour=hour, network=victim.home.network
        )


def synthesize(
    paths: Sequence[LogPath | str], config: SynthesisConfig, *, geo: GeoLocator | None = None
) -> Synthesis:
    """Read the logs and build the attacks; a pure function of the logs and the config."""
    index = index_log(paths, geo or GeoLocator())
    return Synthesizer(index, config).run()


@contextmanager
def injected_log(
    paths: Sequence[LogPath | str], config: SynthesisConfig, *, geo: GeoLocator | None = None
) -> Iterator[tuple[Path, Synthesis]]:
    """The synthesized attacks as a temporary log beside ``paths`` (time order)."""
    synthesis = synthesize(paths, config, geo=geo)
    with tempfile.TemporaryDirectory(prefix="risk-engine-synthesis-") as tmp:
        yield synthesis.write_events(Path(tmp) / "synthesized.jsonl"), synthesis


def auto_synthesis(
    labels: dict[str, Label], requested: bool | None, min_attacks: int
) -> tuple[bool, str]:
    """Whether to synthesize, and why: asked for, refused, or too few labelled attacks."""
    attacks = sum(label.is_attack for label in labels.values())
    if requested is True:
        return True, "asked for (--synthesize-attacks)"
    if requested is False:
        return False, "turned off (--no-synthesize-attacks)"
    if attacks < min_attacks:
        return True, (
            f"the labels hold {attacks} attacks, fewer than the {min_attacks} the supervised"
            " model needs: synthesizing attacks on the log's own users"
        )
    return False, f"the labels hold {attacks} attacks"


def config_summary(config: SynthesisConfig) -> dict[str, Any]:
    """The configuration as JSON-able data."""
    data = asdict(config)
    data["knowledge"] = list(config.knowledge)
    return data
