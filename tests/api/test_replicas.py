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
from risk_engine.config import Settings
from risk_engine.errors import ConfigurationError
from risk_engine.privacy import Hasher
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
