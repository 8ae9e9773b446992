"""Simulated worlds: presets and world files, the default world kept, contexts, shared networks."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import geoip2.database
import pytest
from typer.testing import CliRunner

from risk_engine.cli import app
from risk_engine.errors import ConfigurationError
from risk_engine.offline.simulate.core import Emitter, body
from risk_engine.offline.simulate.geo import geolite2_path
from risk_engine.offline.simulate.simulator import SimulationConfig, simulate, write_simulation
from risk_engine.offline.simulate.world import ATTACK_TYPES, CONTEXTS, WORLDS, World, load_world

SAMPLES = Path(__file__).parents[2] / "data" / "samples"
Pair = tuple[dict[str, Any], dict[str, Any]]


def _only(kind: str) -> tuple[tuple[str, float], ...]:
    return tuple((k, 1.0 if k == kind else 0.0) for k in ATTACK_TYPES)


@pytest.fixture(scope="module")
def busy() -> list[Pair]:
    """A world where every habit is common, so a small run shows each."""
    world = World(
        name="busy",
        cellular_share=0.3,
        vpn_share=0.2,
        corporate_share=0.3,
        office_size=10,
        trip_share=0.2,
        domestic_trip_share=0.5,
        domestic_trip_km=250.0,
        borrowed_share=0.2,
        attack_mix=_only("vpn_takeover"),
        attacker_skill="skilled",
    )
    return list(simulate(SimulationConfig(users=60, days=21, seed=5, world=world)))


@pytest.fixture(scope="module")
def country_of() -> Any:
    reader = geoip2.database.Reader(geolite2_path(), mode=geoip2.database.MODE_MMAP_EXT)
    yield lambda ip: str(reader.city(ip).country.iso_code)
    reader.close()


def test_default_world_still_writes_the_committed_sample(tmp_path: Path) -> None:
    # The Makefile's sample recipe: the default world must keep its seeded events.
    paths = [tmp_path / f"{kind}.jsonl" for kind in ("events", "labels", "outcomes")]
    write_simulation(SimulationConfig(users=80, days=28, seed=7), *paths)
    for path in paths:
        committed = (SAMPLES / path.name).read_bytes()
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(committed).digest()


def test_presets_differ_and_validate() -> None:
    assert {"default", "retail", "corporate", "mobile-heavy"} <= set(WORLDS)
    assert len({replace(w, name="") for w in WORLDS.values()}) == len(WORLDS)
    for world in WORLDS.values():
        assert sum(world.attack_weights()) > 0
    assert WORLDS["default"].attack_weights()[ATTACK_TYPES.index("vpn_takeover")] == 0.0


def test_world_file_starts_from_a_preset(tmp_path: Path) -> None:
    path = tmp_path / "bank.toml"
    path.write_text(
        'base = "corporate"\ncellular_share = 0.25\n[attack_mix]\nvpn_takeover = 2\n',
        encoding="utf-8",
    )
    world = load_world(str(path))
    assert world.name == "bank"
    assert world.cellular_share == 0.25
    assert world.corporate_share == WORLDS["corporate"].corporate_share
    assert dict(world.attack_mix)["vpn_takeover"] == 2.0
    assert load_world("retail") is WORLDS["retail"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cellular_share = 1.5", "cellular_share"),
        ("vpn_share = 0.6\ncorporate_share = 0.6", "add up"),
        ('attacker_skill = "elite"', "attacker_skill"),
        ("[attack_mix]\nphishing = 1", "phishing"),
        ("office_size = 1", "office_size"),
        ("colour = 3", "colour"),
        ('base = "mars"', "base"),
        ("cellular_share = ", "TOML"),
    ],
)
def test_bad_world_files_are_refused_naming_the_setting(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=message):
        load_world(str(path))


def test_unknown_world_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="neither a preset"):
        load_world("no-such-world")


def test_every_legitimate_event_has_a_context(busy: list[Pair]) -> None:
    contexts = Counter(label["context"] for _, label in busy if not label["is_attack"])
    assert set(contexts) <= set(CONTEXTS)
    for context in ("home", "cellular", "vpn", "corporate", "borrowed_device"):
        assert contexts[context] > 0, context
    assert contexts["trip_domestic"] + contexts["trip_abroad"] > 0
    assert all(label["context"] is None for _, label in busy if label["is_attack"])


def test_offices_are_shared_by_many_users() -> None:
    world = World(name="offices", corporate_share=0.7, office_size=100)
    office_users: dict[str, set[str]] = defaultdict(set)
    for event, label in simulate(SimulationConfig(users=80, days=10, seed=5, world=world)):
        if label["context"] == "corporate":
            office_users[event["ip"].rsplit(".", 1)[0]].add(event["user_id"])
    assert max(len(users) for users in office_users.values()) >= 5


def test_cellular_users_hop_between_carrier_addresses(busy: list[Pair]) -> None:
    cellular_ips: dict[str, set[str]] = defaultdict(set)
    for event, label in busy:
        if label["context"] == "cellular":
            cellular_ips[event["user_id"]].add(event["ip"])
    assert max(len(ips) for ips in cellular_ips.values()) >= 5


def test_always_vpn_users_never_show_their_home(busy: list[Pair]) -> None:
    by_user: dict[str, Counter[str]] = defaultdict(Counter)
    for event, label in busy:
        if not label["is_attack"]:
            by_user[event["user_id"]][label["context"]] += 1
    always = [c for c in by_user.values() if c["vpn"] >= 5 and set(c) <= {"vpn", "borrowed_device"}]
    assert always


def test_attack_mix_and_vpn_takeovers_in_the_victims_country(
    busy: list[Pair], country_of: Any
) -> None:
    home: dict[str, str] = {}
    for event, label in busy:
        if label["context"] == "home":
            home.setdefault(event["user_id"], country_of(event["ip"]))
    kinds = {label["attack_type"] for _, label in busy if label["is_attack"]}
    assert kinds == {"vpn_takeover"}
    languages: dict[str, set[str]] = defaultdict(set)
    for event, label in busy:
        if not label["is_attack"]:
            languages[event["user_id"]].add(event["device"]["language"])
    copied = []
    for event, label in busy:
        if label["is_attack"] and event["user_id"] in home:
            assert country_of(event["ip"]) == home[event["user_id"]]
            copied.append(event["device"]["language"] in languages[event["user_id"]])
    # Skilled attackers mostly copy the victim's locale.
    assert len(copied) >= 5 and sum(copied) > 0.6 * len(copied)


def test_worlds_change_the_stream_but_a_world_repeats_itself() -> None:
    small = SimulationConfig(users=30, days=10, seed=9, world=WORLDS["mobile-heavy"])
    first, again = list(simulate(small)), list(simulate(small))
    assert first == again
    assert first != list(simulate(replace(small, world=WORLDS["default"])))


def test_simulate_command_takes_a_world_and_refuses_a_bad_one(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["simulate", "--users", "12", "--days", "3", "--seed", "4"]
    files = ["--out", str(tmp_path / "e.jsonl"), "--labels", str(tmp_path / "l.jsonl")]
    done = runner.invoke(app, [*base, *files, "--world", "mobile-heavy", "--vpn-share", "0.3"])
    assert done.exit_code == 0, done.output
    assert "world mobile-heavy" in done.output
    for flags, message in (
        (["--world", "mars"], "neither a preset"),
        (["--attacker-skill", "elite"], "attacker_skill"),
        (["--cellular-share", "0.7", "--vpn-share", "0.5"], "add up"),
    ):
        refused = runner.invoke(app, [*base, *files, *flags])
        assert refused.exit_code == 2, flags
        assert message in refused.output


@pytest.mark.parametrize("skill", ["skilled", "mixed"])
def test_malware_by_day_labels_the_owners_routine(skill: str) -> None:
    """Skilled malware acts at the victim's usual hours half the time; there its login
    and balance views are the victim's own routine (own device, own home address), and
    the labels say so, so evaluation can tell what no detector could."""
    world = replace(
        WORLDS["corporate"], attack_mix=_only("compromised_device"), attacker_skill=skill
    )
    pairs = list(simulate(SimulationConfig(users=80, days=30, seed=3, world=world)))
    devices: dict[str, set[str]] = defaultdict(set)
    addresses: dict[str, set[str]] = defaultdict(set)
    for event, label in pairs:
        if not label["is_attack"]:
            devices[event["user_id"]].add(event["device"].get("id", ""))
            if label["context"] == "home":
                addresses[event["user_id"]].add(event["ip"])
    attacks = [(event, label) for event, label in pairs if label["is_attack"]]
    routine = [(event, label) for event, label in attacks if label["scenario"] == "owner_routine"]
    assert {label["attack_type"] for _, label in attacks} == {"compromised_device"}
    if skill == "mixed":  # always at night: the hour tells
        assert attacks and not routine
        return
    assert 0 < len(routine) < len(attacks)
    for event, _ in routine:
        assert event["action"] in ("login", "view_account")
        assert event["device"]["id"] in devices[event["user_id"]]
        assert event["ip"] in addresses[event["user_id"]]
    # What the owner does not do every day is never routine.
    assert any(e["action"] not in ("login", "view_account") for e, _ in attacks)


def test_the_habits_kept_for_labels_are_bounded_by_devices_and_homes() -> None:
    """What the simulator remembers per user to label the owner's routine grows with
    the user's devices and home addresses, never with the log (a cellular user's
    carrier address changes every session)."""
    emitter = Emitter()
    phone = {"id": "d-phone", "user_agent": "x"}
    for n in range(1000):
        event = body("u-1", "login", f"10.{n // 250}.{n % 250}.1", None, phone)
        emitter.add(n, event, None, None, "cellular")
        emitter.add(n, body("u-1", "login", "81.2.69.160", None, phone), None, None, "home")
    assert emitter.habits == {"u-1": {("d-phone", "81.2.69.160")}}
    assert emitter.habitual("u-1", phone, "81.2.69.160")
    assert not emitter.habitual("u-1", phone, "10.0.1.1")
