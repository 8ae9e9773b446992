"""Replicas and workers that agree: one explicit secret, and metrics summed over workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from risk_engine.api import create_app
from risk_engine.assembly import build_engine
from risk_engine.config import Settings
from risk_engine.decision import Decision
from risk_engine.engine import Engine
from risk_engine.errors import ConfigurationError
from risk_engine.events import parse_event
from risk_engine.privacy import Hasher
from risk_engine.profiles import ProfileStore, RedisStore
from risk_engine.profiles.sqlite import SQLiteStore
from tests.api.conftest import (
    ADMIN_API_KEY_SHA256,
    API_KEY_SHA256,
    EventFactory,
    Server,
    free_port,
)

Serve = Callable[..., Server]
N_DECISIONS = 20


def _serve_without_secret(
    tmp_path: Path, model_path: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """`risk-engine serve ARGS` with no RISK_ENGINE_SECRET: it must refuse, not serve."""
    cli = Path(sys.executable).with_name("risk-engine")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RISK_ENGINE_")}
    environ.update(
        RISK_ENGINE_VAR_DIR=str(tmp_path / "var"),
        RISK_ENGINE_STORE=f"sqlite:///{tmp_path / 'profiles.db'}",
        RISK_ENGINE_MODEL_PATH=str(model_path),
        RISK_ENGINE_API_KEYS_SHA256=f'["{API_KEY_SHA256}"]',
    )
    environ.update(env)
    # A server that starts anyway serves until the timeout fails the test.
    return subprocess.run(
        [str(cli), "serve", "--port", str(free_port()), *args],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_serve_refuses_redis_without_an_explicit_secret(
    tmp_path: Path, model_path: Path, redis_url: str
) -> None:
    done = _serve_without_secret(tmp_path, model_path, RISK_ENGINE_STORE=redis_url)
    assert done.returncode != 0
    assert "RISK_ENGINE_SECRET" in done.stderr
    # Refused before a per-machine secret was generated.
    assert not (tmp_path / "var" / "secret.key").exists()


def test_serve_refuses_workers_without_an_explicit_secret(tmp_path: Path, model_path: Path) -> None:
    done = _serve_without_secret(tmp_path, model_path, "--workers", "2")
    assert done.returncode != 0
    assert "RISK_ENGINE_SECRET" in done.stderr
    assert "--workers" in done.stderr


def test_app_start_up_refuses_redis_without_an_explicit_secret(
    make_settings: Callable[..., Settings], redis_url: str
) -> None:
    settings = make_settings(store=redis_url, secret=None)
    with (
        pytest.raises(ConfigurationError, match="RISK_ENGINE_SECRET"),
        TestClient(create_app(settings)),
    ):
        pass


def test_settings_refuse_a_previous_secret_equal_to_the_secret(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(secret_previous="api-tests-secret-" + "0" * 32)
    with pytest.raises(ConfigurationError, match="RISK_ENGINE_SECRET_PREVIOUS"):
        settings.resolve_previous_secret()


def _counter_total(exposition: str, name: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(exposition):
        if family.name == name:
            total += sum(s.value for s in family.samples if s.name == name + "_total")
    return total


def _histogram_count(exposition: str, name: str) -> float:
    for family in text_string_to_metric_families(exposition):
        if family.name == name:
            return sum(s.value for s in family.samples if s.name == name + "_count")
    return 0.0


@pytest.mark.slow
def test_metrics_count_every_workers_decisions(
    serve: Serve,
    make_event: EventFactory,
    redis_url: str,
    api_key: str,
    admin_auth: dict[str, str],
    secret: str,
    tmp_path: Path,
) -> None:
    # A directory left over from an earlier run must not be counted: serve cleans it.
    stale = tmp_path / "var" / "prometheus"
    stale.mkdir(parents=True)
    (stale / "counter_4242.db").write_bytes(b"not a metrics file")
    server = serve(
        "--workers",
        "2",
        RISK_ENGINE_STORE=redis_url,
        RISK_ENGINE_API_KEY_OPS=f"admin:{ADMIN_API_KEY_SHA256}",
    )
    user_ids = [f"u-metrics-{time.time_ns()}-{i}" for i in range(N_DECISIONS)]
    headers = {"Authorization": f"Bearer {api_key}"}
    try:
        for user_id in user_ids:
            # A connection per request, so that both workers accept some of them.
            reply = httpx.post(
                server.base_url + "/v1/decisions",
                json=make_event(user_id=user_id),
                headers=headers,
                timeout=30,
            )
            assert reply.status_code == 200, reply.text
        scrapes: list[dict[str, Any]] = []
        for _ in range(4):
            text = httpx.get(server.base_url + "/metrics", headers=admin_auth, timeout=10).text
            scrapes.append(
                {
                    "decisions": _counter_total(text, "risk_engine_decisions"),
                    "latency": _histogram_count(text, "risk_engine_decision_seconds"),
                    "model_info": [
                        line for line in text.splitlines() if line.startswith("risk_engine_model_")
                    ],
                }
            )
        for scrape in scrapes:
            assert scrape["decisions"] == N_DECISIONS, scrapes
            assert scrape["latency"] == N_DECISIONS, scrapes
            # One live model, however many workers report it.
            assert len(scrape["model_info"]) == 1, scrape["model_info"]
    finally:
        hasher = Hasher(secret)
        client = redis.Redis.from_url(redis_url)
        client.delete(
            *(f"risk-engine:profile:{hasher.digest('user', u)}" for u in user_ids),
            *(f"risk-engine:user-events:{hasher.digest('user', u)}" for u in user_ids),
            "risk-engine:burst:ip:" + hasher.digest("ip", "84.208.0.1"),
            "risk-engine:burst:net:84.208.0.0/24",
        )
        client.close()


# -- secret rotation ---------------------------------------------------------------------------

OLD_SECRET = "rotation-old-secret-" + "1" * 32
NEW_SECRET = "rotation-new-secret-" + "2" * 32


@pytest.fixture(params=["sqlite", "redis"])
def rotation_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], ProfileStore]:
    """Opens the same store again each call (an engine before and after the rotation)."""
    if request.param == "sqlite":
        return lambda: SQLiteStore(tmp_path / "rotation.db")
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return lambda: RedisStore(url, prefix=prefix)


def _decide_all(engine: Engine, events: list[dict[str, Any]]) -> list[Decision]:
    return [engine.decide(parse_event(e)) for e in events]


def test_a_rotated_secret_finds_and_carries_over_the_old_profiles(
    make_settings: Callable[..., Settings],
    rotation_store: Callable[[], ProfileStore],
    make_history: Callable[..., list[dict[str, Any]]],
    make_event: EventFactory,
) -> None:
    user_id = f"u-rotated-{time.time_ns()}"
    before = build_engine(make_settings(secret=OLD_SECRET), store=rotation_store())
    _decide_all(before, make_history(user_id))
    old_key = before.user_key(user_id)
    kept = before.store.get(old_key)
    before.store.close()
    assert kept is not None and kept.n_events > 0

    # Without the previous secret the user is a stranger.
    stranger = build_engine(make_settings(secret=NEW_SECRET), store=rotation_store())
    codes = {r.code for r in stranger.decide(parse_event(make_event(user_id=user_id))).reasons}
    stranger.store.delete(stranger.user_key(user_id))
    stranger.store.close()
    assert "new_user" in codes

    after = build_engine(
        make_settings(secret=NEW_SECRET, secret_previous=OLD_SECRET), store=rotation_store()
    )
    try:
        usual = after.decide(parse_event(make_event(user_id=user_id)))
        assert not {"new_user", "new_device"} & {r.code for r in usual.reasons}, usual.reasons
        new_key = after.user_key(user_id)
        moved = after.store.get(new_key)
        assert moved is not None
        assert moved.user_key == new_key
        assert moved.n_events == kept.n_events + 1
        # The same pseudonym and data key: what was sealed for the user still opens.
        assert (moved.ref, moved.data_key) == (kept.ref, kept.data_key)
        assert Hasher(NEW_SECRET).digest("device", "d-1") in {k[3:] for k in moved.devices}
        # From now on the new key is the user's: a second event adds to it.
        after.decide(parse_event(make_event(user_id=user_id)))
        again = after.store.get(new_key)
        assert again is not None and again.n_events == kept.n_events + 2
    finally:
        for key in after.user_keys(user_id):
            after.store.delete(key)
        after.store.close()


def test_a_challenge_issued_before_the_move_completes_after_it(
    make_settings: Callable[..., Settings],
    rotation_store: Callable[[], ProfileStore],
    make_history: Callable[..., list[dict[str, Any]]],
    make_event: EventFactory,
) -> None:
    user_id = f"u-rotated-{time.time_ns()}"
    before = build_engine(make_settings(secret=OLD_SECRET), store=rotation_store())
    _decide_all(before, make_history(user_id))
    stepped = before.decide(parse_event(make_event(user_id=user_id, ip="203.2.218.214")))
    before.store.close()
    assert stepped.challenge is not None, stepped
    after = build_engine(
        make_settings(secret=NEW_SECRET, secret_previous=OLD_SECRET), store=rotation_store()
    )
    try:
        after.decide(parse_event(make_event(user_id=user_id)))
        result = after.complete_challenge(
            stepped.challenge.id, passed=True, session_id="s-1", acr=None
        )
        assert result.user_key == after.user_key(user_id)
        moved = after.store.get(after.user_key(user_id))
        assert moved is not None and stepped.event_id not in moved.pending
    finally:
        for key in after.user_keys(user_id):
            after.store.delete(key)
        after.store.close()


def test_erasure_during_a_rotation_erases_both_keys(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    shared_engine: Engine,
    make_history: Callable[..., list[dict[str, Any]]],
    admin_auth: dict[str, str],
) -> None:
    user_id = f"u-rotated-{time.time_ns()}"
    store_url = f"sqlite:///{tmp_path / 'profiles.db'}"
    before = build_engine(make_settings(secret=OLD_SECRET, store=store_url))
    _decide_all(before, make_history(user_id, days=2))
    before.store.close()
    settings = make_settings(secret=NEW_SECRET, secret_previous=OLD_SECRET, store=store_url)
    with TestClient(create_app(settings), headers=admin_auth) as http:
        reply = http.delete(f"/v1/users/{user_id}")
        assert reply.status_code in (200, 204), reply.text
    check = SQLiteStore(tmp_path / "profiles.db")
    try:
        assert check.get(Hasher(OLD_SECRET).digest("user", user_id)) is None
        assert check.get(Hasher(NEW_SECRET).digest("user", user_id)) is None
    finally:
        check.close()
