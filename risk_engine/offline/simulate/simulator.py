"""A seeded, realistic synthetic event stream with attack labels in a separate file.

The stream trains and evaluates the anomaly model, so legitimate users have homes,
devices and daily rhythms, benign noise (travel, new phones, VPNs, ...) looks benign
to a careful behavioral model, and attacks look like real attacks. Geography is the
real GeoLite2 City database: every emitted IP resolves to the intended city.

A ``World`` (``world``) sets who the users are and who attacks them:
cellular, VPN and office users, travel, borrowed devices, the attack mix and the
attackers' skill. Every legitimate event's label says its ``context`` (home, work,
corporate, cellular, vpn, trip_domestic, trip_abroad, borrowed_device), so friction
can be measured where it falls.

Generation is streaming: users' days are generated one simulation day at a time,
sorted and released, so a million events never sit in memory at once.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from risk_engine.offline.logs import LogWriter
from risk_engine.offline.simulate.attacks import AttackPlanner
from risk_engine.offline.simulate.benign import BENIGN_SCENARIOS, DayGenerator
from risk_engine.offline.simulate.benign import assign_scenarios as _assign_scenarios
from risk_engine.offline.simulate.core import HOUR, Clock, Emitter, Pending
from risk_engine.offline.simulate.geo import CityPool, build_city_pool
from risk_engine.offline.simulate.networks import SharedNetworks, assign_world
from risk_engine.offline.simulate.profiles import COUNTRIES, User, make_user
from risk_engine.offline.simulate.world import ATTACK_TYPES, CONTEXTS, WORLDS, World

__all__ = [
    "ATTACK_TYPES",
    "BENIGN_SCENARIOS",
    "CONTEXTS",
    "WORLDS",
    "SimulationConfig",
    "SimulationSummary",
    "World",
    "simulate",
    "write_simulation",
]

# Local days start at most 14 h before the UTC day (UTC+14), so after generating day d
# nothing earlier than this margin before UTC midnight of day d+1 can still appear.
_RELEASE_MARGIN = 15 * HOUR


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate: how many users over how many days, from which seed, in which world."""

    users: int = 200
    days: int = 30
    seed: int = 7
    start: datetime = datetime(2026, 1, 5, tzinfo=UTC)
    attack_fraction: float = 0.01  # roughly the share of events that are attacks
    world: World = WORLDS["default"]
    # Put before every user, session and event id, so that logs of several worlds can
    # be trained and calibrated on together without one world's users becoming another's.
    id_prefix: str = ""


@dataclass(frozen=True)
class SimulationSummary:
    """Counts of what a simulation produced."""

    events: int
    attacks: int
    by_attack_type: dict[str, int]
    by_scenario: dict[str, int]  # attack scenarios and benign ones
    by_context: dict[str, int]  # legitimate events by context


def _validate(config: SimulationConfig) -> None:
    if config.users < 1:
        raise ValueError("users must be at least 1")
    if config.days < 1:
        raise ValueError("days must be at least 1")
    if not 0.0 <= config.attack_fraction < 1.0:
        raise ValueError("attack_fraction must be in [0, 1)")
    if config.start.tzinfo is None:
        raise ValueError("start must be timezone-aware")


def _home_countries(pool: CityPool) -> list[str]:
    """Countries users can live in: present in the pool with several cities."""
    usable = [c for c in COUNTRIES if len(pool.by_country.get(c, ())) >= 3]
    if not usable:
        raise RuntimeError("the GeoLite2 city pool has none of the home countries")
    return usable


def _make_users(
    config: SimulationConfig, pool: CityPool, clock: Clock
) -> tuple[list[User], SharedNetworks | None]:
    rng = random.Random(f"{config.seed}/users")
    countries = _home_countries(pool)
    users = [make_user(rng, pool, i, countries) for i in range(config.users)]
    scenarios = random.Random(f"{config.seed}/scenarios")
    _assign_scenarios(scenarios, pool, clock, users, config.world)
    # A stream of its own, so a world without these habits leaves the others untouched.
    networks = assign_world(random.Random(f"{config.seed}/world"), pool, users, config.world)
    return users, networks


def _stamp(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _finish(
    ready: list[Pending], counter: list[int], prefix: str = ""
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    n = counter[0]
    for ts, _seq, event, attack, scenario, context in ready:
        n += 1
        event_id = f"{prefix}e-{n:08d}"
        event["event_id"] = event_id
        if prefix:
            event["user_id"] = prefix + event["user_id"]
            if event.get("session_id"):
                event["session_id"] = prefix + event["session_id"]
        event["timestamp"] = _stamp(ts)
        label = {
            "event_id": event_id,
            "is_attack": attack is not None,
            "attack_type": attack,
            "scenario": scenario,
            "context": None if attack is not None else context,
        }
        yield event, label
    counter[0] = n


def simulate(config: SimulationConfig) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Yield (event, label) pairs in timestamp order.

    The same config always gives the same stream. Events follow section 1 of the
    contract; labels are ``{"event_id", "is_attack", "attack_type", "scenario", "context"}``.
    """
    _validate(config)
    pool = build_city_pool(config.seed)
    clock = Clock(config.start, config.days)
    users, networks = _make_users(config, pool, clock)
    emitter = Emitter()
    days = DayGenerator(random.Random(f"{config.seed}/days"), clock, emitter)
    benign_per_day = sum(u.rate for u in users)
    attacks = AttackPlanner(
        random.Random(f"{config.seed}/attacks"),
        pool,
        clock,
        emitter,
        users,
        fraction=config.attack_fraction,
        benign_per_day=benign_per_day,
        world=config.world,
        networks=networks,
    )
    counter = [0]
    for day in range(config.days):
        days.start_day()
        for user in users:
            days.user_day(user, day)
        attacks.run_day(day, days.sessions)
        boundary = clock.utc_midnight(day + 1) - _RELEASE_MARGIN
        yield from _finish(emitter.release(min(boundary, clock.end_ts)), counter, config.id_prefix)
    yield from _finish(emitter.release(None), counter, config.id_prefix)


def write_simulation(
    config: SimulationConfig,
    events_path: Path,
    labels_path: Path,
    outcomes_path: Path | None = None,
) -> SimulationSummary:
    """Write events, labels and (optionally) step-up outcomes, as each name says.

    (JSON Lines, gzip-compressed for a name ending in ``.gz``, or Parquet: see
    ``offline.logs.LogWriter``.)

    Outcomes follow section 3 of the contract: every legitimate event "passed",
    every attack event "failed"; the engine only applies them where it stepped up.
    """
    events = attacks = 0
    by_attack: Counter[str] = Counter()
    by_scenario: Counter[str] = Counter()
    by_context: Counter[str] = Counter()
    with ExitStack() as stack:
        ev_out = stack.enter_context(LogWriter(Path(events_path)))
        lab_out = stack.enter_context(LogWriter(Path(labels_path)))
        out_file = None
        if outcomes_path is not None:
            out_file = stack.enter_context(LogWriter(Path(outcomes_path)))
        for event, label in simulate(config):
            ev_out.write_record(event)
            lab_out.write_record(label)
            events += 1
            attack = label["attack_type"]
            if attack is not None:
                attacks += 1
                by_attack[attack] += 1
            if label["scenario"] is not None:
                by_scenario[label["scenario"]] += 1
            if label["context"] is not None:
                by_context[label["context"]] += 1
            if out_file is not None:
                outcome = {
                    "event_id": label["event_id"],
                    "step_up": "failed" if attack is not None else "passed",
                }
                out_file.write_record(outcome)
    return SimulationSummary(
        events=events,
        attacks=attacks,
        by_attack_type=dict(sorted(by_attack.items())),
        by_scenario=dict(sorted(by_scenario.items())),
        by_context=dict(sorted(by_context.items())),
    )
