"""The one builder: the service's engine from its settings, the offline one without."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

import pytest

import risk_engine
from risk_engine.assembly import BACKTEST_SECRET, build_engine, load_scorer, load_scorers
from risk_engine.config import Settings
from risk_engine.events import Event, parse_event
from risk_engine.geo import GeoLocator
from risk_engine.model.artifact import default_model_path
from risk_engine.privacy import Hasher
from risk_engine.profiles.memory import MemoryStore

PACKAGE = Path(risk_engine.__file__).parent
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def geo() -> GeoLocator:
    return GeoLocator()


def settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "store": "memory://",
        "var_dir": tmp_path / "var",
        "secret": "assembly-tests-secret-0123456789abcdef",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def login(user_id: str) -> Event:
    return parse_event(
        {
            "event_id": "e-1",
            "timestamp": T0.isoformat(),
            "user_id": user_id,
            "action": "login",
            "ip": "81.2.69.142",
        }
    )


def test_the_offline_engine_keys_users_deterministically_and_keeps_them_in_memory(
    geo: GeoLocator,
) -> None:
    engine = build_engine(geo=geo)
    assert engine.scorer is None and engine.shadow is None
    assert isinstance(engine.store, MemoryStore)
    assert engine.user_key("alice") == Hasher(BACKTEST_SECRET).digest("user", "alice")
    assert engine.user_key("alice") == build_engine(geo=geo).user_key("alice")
    assert engine.previous_hasher is None


def test_the_offline_engine_decides_with_its_scorer_on_its_clock(geo: GeoLocator) -> None:
    scorer = load_scorer(None, None)
    engine = build_engine(geo=geo, scorer=scorer, clock=lambda: 42.0)
    assert engine.scorer is scorer
    assert engine.clock() == 42.0
    assert engine.decide(login("alice")).model_version == scorer.model_version


def test_the_service_engine_follows_its_settings(tmp_path: Path, geo: GeoLocator) -> None:
    s = settings(
        tmp_path,
        shadow_model_path=default_model_path(),
        device_trust_days=7.0,
        challenge_ttl_s=60.0,
        include_features=True,
    )
    engine = build_engine(s, geo=geo)
    live, shadow = load_scorers(s)
    assert engine.scorer is not None and engine.shadow is not None
    assert engine.scorer.model_version == live.model_version
    assert shadow is not None and engine.shadow.model_version == shadow.model_version
    assert engine.device_trust_s == 7 * 86400.0
    assert engine.challenge_ttl_s == 60.0
    assert engine.include_features
    assert engine.user_key("alice") == Hasher(s.resolve_secret()).digest("user", "alice")
    assert engine.user_key("alice") != build_engine(geo=geo).user_key("alice")


def test_a_service_engine_without_a_model_loads_none(tmp_path: Path, geo: GeoLocator) -> None:
    engine = build_engine(settings(tmp_path), geo=geo, with_model=False)
    assert engine.scorer is None and engine.shadow is None


def test_a_scorer_given_replaces_the_settings_model(tmp_path: Path, geo: GeoLocator) -> None:
    scorer = load_scorer(None, None)
    s = settings(tmp_path, shadow_model_path=default_model_path())
    engine = build_engine(s, geo=geo, scorer=scorer)
    assert engine.scorer is scorer and engine.shadow is None


def test_no_shadow_without_shadow_settings(tmp_path: Path) -> None:
    live, shadow = load_scorers(settings(tmp_path))
    assert shadow is None and live.model_version


def test_engines_are_built_by_the_builder_only() -> None:
    """The service, the backtest and training share the builder: no other ``Engine(...)``."""
    builders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "Engine"
            ):
                builders.append(str(path.relative_to(PACKAGE)))
    assert builders == ["assembly.py", "assembly.py"]


def test_a_store_given_is_the_engines_even_when_empty(tmp_path: Path, geo: GeoLocator) -> None:
    """An empty MemoryStore is falsy: the distributed backtest's dealt store is one."""
    store = MemoryStore()
    assert len(store) == 0
    assert build_engine(store=store, geo=geo).store is store
    assert build_engine(settings(tmp_path), store=store, geo=geo).store is store
