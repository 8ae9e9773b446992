"""Attack synthesis on a log's own users: seeded, every kind as defined, no leak into profiles."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from risk_engine.assembly import BACKTEST_SECRET, build_engine
from risk_engine.cli import app
from risk_engine.engine import Engine
from risk_engine.errors import ConfigurationError
from risk_engine.events import parse_event
from risk_engine.geo import GeoLocator
from risk_engine.model.artifact import load_artifact
from risk_engine.model.detector import DetectorParams
from risk_engine.offline.labels import load_labels
from risk_engine.offline.logs import LogReport
from risk_engine.offline.replay import replay
from risk_engine.offline.synthesize import (
    KINDS,
    LABEL_PREFIX,
    Episode,
    Synthesis,
    SynthesisConfig,
    parse_mix,
    synthesize,
)
from risk_engine.offline.train import train
from risk_engine.privacy import Hasher
from risk_engine.useragent import parse_user_agent

SAMPLES = Path(__file__).parents[2] / "data" / "samples"
EVENTS = SAMPLES / "events.jsonl"
CONFIG = SynthesisConfig(seed=3, rate=0.05)
runner = CliRunner()


@pytest.fixture(scope="module")
def geo() -> Iterator[GeoLocator]:
    locator = GeoLocator()
    yield locator
    locator.close()


@pytest.fixture(scope="module")
def real() -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in EVENTS.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def synthesis(geo: GeoLocator) -> Synthesis:
    return synthesize([EVENTS], CONFIG, geo=geo)


def _epoch(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def _before(real: list[dict[str, Any]], user: str, ts: float) -> list[dict[str, Any]]:
    """The user's real events before ``ts``: what the attacker could know."""
    return [e for e in real if e["user_id"] == user and _epoch(e) < ts]


def _episodes(synthesis: Synthesis, kind: str) -> list[Episode]:
    found = [ep for ep in synthesis.episodes if ep.kind == kind]
    assert found, f"no {kind} episode"
    return found


def _network(ip: str) -> str:
    return ip.rsplit(".", 1)[0]


def test_same_seed_same_attacks_other_seed_other(geo: GeoLocator, synthesis: Synthesis) -> None:
    again = synthesize([EVENTS], CONFIG, geo=geo)
    other = synthesize([EVENTS], SynthesisConfig(seed=4, rate=0.05), geo=geo)
    assert again.events == synthesis.events
    assert again.summary() == synthesis.summary()
    assert other.events != synthesis.events


def test_injected_events_are_valid_labelled_and_inside_the_log(
    synthesis: Synthesis, real: list[dict[str, Any]]
) -> None:
    events = synthesis.events
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids))
    assert not set(ids) & {e["event_id"] for e in real}
    first, last = min(map(_epoch, real)), max(map(_epoch, real))
    for event in events:
        parse_event(event)
        assert first < _epoch(event) < last
    labels = synthesis.labels
    assert set(labels) == set(ids)
    assert all(label.is_attack for label in labels.values())
    assert {label.attack_type for label in labels.values()} == {LABEL_PREFIX + k for k in KINDS}
    # About the asked rate: episodes are whole, so the last one may overshoot.
    assert round(0.05 * len(real)) <= len(events) <= round(0.05 * len(real)) + 60


def test_new_country_takeover_comes_from_another_users_address_abroad(
    synthesis: Synthesis, real: list[dict[str, Any]], geo: GeoLocator
) -> None:
    for episode in _episodes(synthesis, "new_country_takeover"):
        user = episode.victims[0]
        history = _before(real, user, episode.start)
        countries = {geo.lookup(ip_address(e["ip"])).country for e in history}
        agents = {e.get("device", {}).get("user_agent") for e in history}
        for event in episode.events:
            assert geo.lookup(ip_address(event["ip"])).country not in countries
            assert any(e["ip"] == event["ip"] and e["user_id"] != user for e in real)
            assert event["device"]["user_agent"] not in agents


def test_vpn_takeover_is_in_the_victims_country_on_a_network_it_never_used(
    synthesis: Synthesis, real: list[dict[str, Any]], geo: GeoLocator
) -> None:
    for episode in _episodes(synthesis, "vpn_takeover"):
        user = episode.victims[0]
        history = _before(real, user, episode.start)
        home = Counter(e["ip"] for e in history).most_common(1)[0][0]
        networks = {_network(e["ip"]) for e in history}
        for event in episode.events:
            location = geo.lookup(ip_address(event["ip"]))
            assert location.country == geo.lookup(ip_address(home)).country
            assert _network(event["ip"]) not in networks


def test_targeted_takeover_copies_browser_family_city_and_hours(
    synthesis: Synthesis, real: list[dict[str, Any]], geo: GeoLocator
) -> None:
    in_city = 0
    for episode in _episodes(synthesis, "targeted_takeover"):
        user = episode.victims[0]
        history = _before(real, user, episode.start)
        devices = Counter(e["device"]["id"] for e in history if e.get("device", {}).get("id"))
        primary = next(
            e["device"]
            for e in history
            if e.get("device", {}).get("id") == devices.most_common(1)[0][0]
        )
        real_ua = parse_user_agent(primary["user_agent"])
        cities = Counter(
            (loc.country, loc.city)
            for loc in (geo.lookup(ip_address(e["ip"])) for e in history)
            if loc.city
        )
        home_city = cities.most_common(1)[0][0]
        networks = {_network(e["ip"]) for e in history}
        zone = geo.lookup(ip_address(Counter(e["ip"] for e in history).most_common(1)[0][0]))
        hours = Counter(
            datetime.fromtimestamp(_epoch(e), ZoneInfo(zone.time_zone or "UTC")).hour
            for e in history
        )
        for event in episode.events:
            ua = parse_user_agent(event["device"]["user_agent"])
            assert (ua.family, ua.os_family) == (real_ua.family, real_ua.os_family)
            assert event["device"].get("timezone") == primary.get("timezone")
            assert event["device"].get("language") == primary.get("language")
            assert event["device"].get("id") != primary["id"]
            assert _network(event["ip"]) not in networks
            location = geo.lookup(ip_address(event["ip"]))
            assert location.country == home_city[0]
            in_city += (location.country, location.city) == home_city
        start = datetime.fromtimestamp(episode.start, ZoneInfo(zone.time_zone or "UTC"))
        assert hours[start.hour] > 0, "the attack starts at one of the victim's usual hours"
    assert in_city > 0, "some targeted attacks come from the victim's own city"


def test_session_hijack_rides_the_victims_live_session_from_abroad(
    synthesis: Synthesis, real: list[dict[str, Any]], geo: GeoLocator
) -> None:
    for episode in _episodes(synthesis, "session_hijack"):
        user = episode.victims[0]
        last = _before(real, user, episode.start)[-1]
        assert all(e["action"] != "login" for e in episode.events)
        for event in episode.events:
            assert event["session_id"] == last["session_id"]
            assert event["device"] == last["device"]
            here = geo.lookup(ip_address(event["ip"])).country
            assert here != geo.lookup(ip_address(last["ip"])).country
        assert 0 < episode.start - _epoch(last) <= 1200


def test_credential_stuffing_tries_many_accounts_from_one_network(synthesis: Synthesis) -> None:
    for episode in _episodes(synthesis, "credential_stuffing"):
        assert len({e["user_id"] for e in episode.events}) >= 10
        assert len({_network(e["ip"]) for e in episode.events}) == 1
        logins = [e for e in episode.events if e["action"] == "login"]
        failed = [e for e in logins if e["success"] is False]
        assert len(failed) > len(logins) / 2
        assert all("id" not in e["device"] for e in episode.events)


def test_compromised_device_is_the_victims_device_and_home_at_quiet_hours(
    synthesis: Synthesis, real: list[dict[str, Any]], geo: GeoLocator
) -> None:
    allowed = {"login", "add_payee", "transfer", "export_data", "change_mfa"}
    for episode in _episodes(synthesis, "compromised_device"):
        user = episode.victims[0]
        history = _before(real, user, episode.start)
        devices = Counter(e["device"]["id"] for e in history if e.get("device", {}).get("id"))
        home = Counter(e["ip"] for e in history).most_common(1)[0][0]
        zone = ZoneInfo(geo.lookup(ip_address(home)).time_zone or "UTC")
        hours = Counter(datetime.fromtimestamp(_epoch(e), zone).hour for e in history)
        quiet = min(hours.get(h, 0) for h in range(24))
        assert hours.get(datetime.fromtimestamp(episode.start, zone).hour, 0) == quiet
        payees = set()
        for event in episode.events:
            assert event["device"]["id"] == devices.most_common(1)[0][0]
            assert event["ip"] == home
            assert event["action"] in allowed
            if event["action"] == "add_payee":
                payees.add(event["payee"])
            if event["action"] == "transfer" and payees:
                assert event["payee"] in payees


def test_injected_attacks_never_teach_the_victims_profile(
    synthesis: Synthesis, geo: GeoLocator, tmp_path: Path
) -> None:
    """Replayed as refused: profiles learn what they learn without them; no attacker trust."""
    injected = synthesis.write_events(tmp_path / "injected.jsonl")
    labels = synthesis.labels

    def replayed(paths: list[Path]) -> Engine:
        engine = build_engine(geo=geo)  # training's own engine and replay, as train() has them
        replay(paths, labels, engine=engine)
        return engine

    clean, attacked = replayed([EVENTS]), replayed([EVENTS, injected])
    victims = {v for ep in synthesis.episodes for v in ep.victims}
    attacker_devices = {
        engine_key
        for ep in synthesis.episodes
        # The other two kinds use the victim's own device (the malware's host, the stolen cookie).
        if ep.kind not in ("compromised_device", "session_hijack")
        for e in ep.events
        if e["device"].get("id")
        for engine_key in ["id:" + Hasher(BACKTEST_SECRET).digest("device", e["device"]["id"])]
    }
    assert attacker_devices
    for user in victims:
        key = clean.user_key(user)
        before, after = clean.store.get(key), attacked.store.get(key)
        assert before is not None and after is not None
        for name in ("places", "hours", "countries", "cities", "networks", "ips", "actions"):
            assert getattr(after, name) == getattr(before, name), name
        assert (after.amounts, after.n_events) == (before.amounts, before.n_events)
        trusted = {k for k, d in after.devices.items() if d.trusted}
        assert trusted == {k for k, d in before.devices.items() if d.trusted}
        assert not trusted & attacker_devices
        assert after.n_seen > before.n_seen  # the attack still counted as activity


def test_mix_and_knowledge_select_the_kinds(geo: GeoLocator) -> None:
    only = synthesize([EVENTS], SynthesisConfig(seed=1, rate=0.01, knowledge=("device",)), geo=geo)
    assert {ep.kind for ep in only.episodes} == {"compromised_device"}
    mix = parse_mix("vpn_takeover=2,targeted_takeover")
    config = SynthesisConfig(seed=1, rate=0.01, mix=mix)
    assert config.kinds == ("vpn_takeover", "targeted_takeover")
    with pytest.raises(ConfigurationError, match="unknown attack kind"):
        parse_mix("teleport=1")
    with pytest.raises(ConfigurationError, match="no attack kind"):
        SynthesisConfig(mix=mix, knowledge=("device",))
    with pytest.raises(ConfigurationError, match="rate"):
        SynthesisConfig(rate=0.0)


def test_train_synthesizes_when_labels_are_scarce_and_records_it(
    geo: GeoLocator, tmp_path: Path
) -> None:
    params = DetectorParams(n_estimators=20, supervised_max_iter=10)
    with threadpool_limits(limits=1):
        artifact, table = train([EVENTS], tmp_path / "m.joblib", params=params, geo=geo)
    injected = load_artifact(tmp_path / "m.joblib").training["synthesis"]
    assert injected["enabled"] is True
    assert "fewer than" in injected["reason"]
    assert set(injected["episodes_by_kind"]) == set(KINDS)
    assert injected["injected_events"] == int(table.attack.sum())
    assert injected["seed"] == params.seed and injected["replay_rule"] == "refused"
    assert artifact.model.kind == "iforest+hgb"
    assert artifact.training["files"] == [str(EVENTS)]


def test_train_with_enough_labels_does_not_synthesize(geo: GeoLocator, tmp_path: Path) -> None:
    labels = SAMPLES / "labels.jsonl"
    assert sum(label.is_attack for label in load_labels([labels], LogReport()).values()) >= 20
    params = DetectorParams(n_estimators=20, supervised_max_iter=10)
    with threadpool_limits(limits=1):
        artifact, _ = train(
            [EVENTS], tmp_path / "m.joblib", labels=[labels], params=params, geo=geo
        )
    assert artifact.training["synthesis"]["enabled"] is False


def test_cli_train_says_it_synthesized(tmp_path: Path) -> None:
    out = tmp_path / "m.joblib"
    result = runner.invoke(app, ["train", str(EVENTS), "--out", str(out), "--trees", "20"])
    assert result.exit_code == 0, result.output
    assert "synthesized attacks: the labels hold 0 attacks, fewer than" in result.output
    off = runner.invoke(
        app,
        ["train", str(EVENTS), "--out", str(out), "--trees", "20", "--no-synthesize-attacks"],
    )
    assert off.exit_code == 0, off.output
    assert "synthesized" not in off.output
    assert load_artifact(out).training["synthesis"]["enabled"] is False


def test_cli_rejects_an_unknown_attack_kind(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["train", str(EVENTS), "--out", str(tmp_path / "m.joblib"), "--attack-mix", "teleport=1"],
    )
    assert result.exit_code == 2
    assert "unknown attack kind 'teleport'" in result.output


def test_cli_evaluate_reports_synthesized_kinds_beside_the_labels(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(EVENTS),
            "--labels",
            str(SAMPLES / "labels.jsonl"),
            "--synthesize-attacks",
            "--attack-rate",
            "0.03",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Independent judge" in result.output and "Synthesized attacks" in result.output
    reports = orjson.loads(out.read_bytes())
    independent = reports["independent"]["scopes"]["all"]["attacks_by_type"]
    synthesized = reports["synthesized"]["scopes"]["all"]["attacks_by_type"]
    assert not any(k.startswith(LABEL_PREFIX) for k in independent)
    assert {LABEL_PREFIX + k for k in KINDS} <= set(synthesized)
    assert set(independent) <= set(synthesized)
    assert reports["synthesized"]["synthesis"]["seed"] == 1


def test_cli_evaluate_without_labels_needs_synthesis(tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(EVENTS)])
    assert result.exit_code == 2
    assert "--labels is required" in result.output
    ok = runner.invoke(app, ["evaluate", str(EVENTS), "--synthesize-attacks"])
    assert ok.exit_code == 0, ok.output
    assert "Independent judge" not in ok.output
    assert "synthetic:compromised_device" in ok.output
