"""End to end: `risk-engine serve` (uvicorn) on 127.0.0.1, with SQLite and with Redis."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from risk_engine.audit import AuditKey, verify_chain
from risk_engine.privacy import Hasher
from risk_engine.profiles.redis import RedisStore
from risk_engine.profiles.sqlite import SQLiteStore

EventFactory = Callable[..., dict[str, Any]]
Serve = Callable[..., Any]
N_CONCURRENT, N_THREADS = 200, 16


# conftest's ADMIN_API_KEY (scope admin, which reads the metrics).
METRICS_AUTH = {"Authorization": "Bearer rek_test-admin-key-for-the-api-tests"}


def metric(base_url: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    response = httpx.get(base_url + "/metrics", headers=METRICS_AUTH, timeout=5)
    assert response.status_code == 200, response.text
    text = response.text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def hammer(
    base_url: str, headers: dict[str, str], make_event: EventFactory, user_id: str
) -> list[int]:
    """N_CONCURRENT decisions for one user from N_THREADS threads; their statuses."""
    start = datetime.now(UTC) - timedelta(hours=1)
    events = [
        make_event(
            user_id=user_id,
            action="view_account",
            timestamp=(start + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        for i in range(N_CONCURRENT)
    ]
    with (
        httpx.Client(base_url=base_url, headers=headers, timeout=30) as http,
        ThreadPoolExecutor(N_THREADS) as pool,
    ):
        statuses = list(pool.map(lambda e: http.post("/v1/decisions", json=e).status_code, events))
    return statuses


def test_sqlite_server_end_to_end(
    serve: Serve,
    make_event: EventFactory,
    tmp_path: Path,
    api_key: str,
    secret: str,
) -> None:
    # No store configured: the default SQLite file under ./var, created on start.
    server = serve(RISK_ENGINE_STORE=None, RISK_ENGINE_VAR_DIR=None)
    assert (tmp_path / "var" / "profiles.db").is_file()
    headers = {"Authorization": f"Bearer {api_key}"}
    url = server.base_url
    response = httpx.post(url + "/v1/decisions", json=make_event(), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["decision"] in {"allow", "step_up", "deny"}
    assert httpx.post(url + "/v1/decisions", json=make_event()).status_code == 401
    assert httpx.post(url + "/v1/decisions", json={"ip": 1}, headers=headers).status_code == 422
    assert httpx.get(url + "/readyz").json()["status"] == "ready"
    assert httpx.get(url + "/openapi.json").json()["info"]["title"] == "risk-engine"

    statuses = hammer(url, headers, make_event, "u-hot")
    assert statuses == [200] * N_CONCURRENT
    assert metric(url, "risk_engine_decisions_total") == N_CONCURRENT + 1
    assert metric(url, "risk_engine_decision_seconds_count") == N_CONCURRENT + 1
    assert metric(url, "risk_engine_degraded_decisions_total") == 0

    # SIGHUP reloads model and policy in place.
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while metric(url, "risk_engine_reloads_total", result="ok") < 1:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    assert httpx.post(url + "/v1/decisions", json=make_event(), headers=headers).is_success

    # Another process reads the file beside the server (updates are committed in groups
    # within milliseconds): none of the concurrent updates of one user was lost.
    store = SQLiteStore(tmp_path / "var" / "profiles.db")
    user_key = Hasher(secret).digest("user", "u-hot")
    deadline = time.monotonic() + 5.0
    profile = store.get(user_key)
    while (profile is None or profile.n_seen < N_CONCURRENT) and time.monotonic() < deadline:
        time.sleep(0.01)
        profile = store.get(user_key)
    store.close()
    assert profile is not None and profile.n_seen == N_CONCURRENT


def test_redis_server_with_two_workers(
    serve: Serve,
    make_event: EventFactory,
    redis_url: str,
    api_key: str,
    secret: str,
    tmp_path: Path,
) -> None:
    server = serve("--workers", "2", RISK_ENGINE_STORE=redis_url)
    hasher = Hasher(secret)
    headers = {"Authorization": f"Bearer {api_key}"}
    user_id = f"u-redis-{time.time_ns()}"
    user_key = hasher.digest("user", user_id)
    store = RedisStore(redis_url)
    try:
        assert httpx.get(server.base_url + "/readyz").json()["checks"]["store"] == "ok"
        statuses = hammer(server.base_url, headers, make_event, user_id)
        assert statuses == [200] * N_CONCURRENT
        profile = store.get(user_key)
        assert profile is not None and profile.n_seen == N_CONCURRENT
    finally:
        store.delete(user_key)
        store.close()
        # The burst windows this test wrote under the shared default prefix.
        client = redis.Redis.from_url(redis_url)
        client.delete(
            "risk-engine:burst:ip:" + hasher.digest("ip", "84.208.0.1"),
            "risk-engine:burst:net:84.208.0.0/24",
        )
        client.close()
    # Both workers appended to one audit log, under the one key they generated, and its chain held.
    key = AuditKey.from_file(tmp_path / "var" / "audit.key")
    chain = verify_chain(tmp_path / "var" / "audit.jsonl", [key])
    assert chain.ok, chain
    assert chain.records == N_CONCURRENT


def test_a_redis_outage_degrades_but_never_fails_decisions(
    serve: Serve,
    make_event: EventFactory,
    throwaway_redis: tuple[str, subprocess.Popen[bytes]],
    api_key: str,
) -> None:
    url, redis_process = throwaway_redis
    server = serve(RISK_ENGINE_STORE=url)
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as http:
        before = http.post("/v1/decisions", json=make_event(user_id="u-outage")).json()
        assert before["degraded"] is False
        assert redis.Redis.from_url(url).dbsize() > 0  # the service really used this Redis

        redis_process.kill()
        redis_process.wait(timeout=10)
        expected = {"login": "step_up", "transfer": "step_up", "view_account": "allow"}
        for action, outcome in expected.items():
            extra = {"amount": 50.0, "currency": "EUR"} if action == "transfer" else {}
            response = http.post(
                "/v1/decisions", json=make_event(user_id="u-outage", action=action, **extra)
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["degraded"] is True
            assert body["reasons"][0]["code"] == "degraded"
            assert "profile store" in body["reasons"][0]["detail"]
            assert body["decision"] == outcome, (action, body)
            # Degraded step-ups issue no challenge (nowhere to keep it) and say so.
            assert "challenge" not in body
        ready = http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["store"] == "failed"  # no internals without admin
        assert ready.json()["checks"]["model"] == "ok"
        result = http.post("/v1/challenges/c-x/result", json={"passed": True, "method": "totp"})
        assert result.status_code == 503
    assert metric(server.base_url, "risk_engine_degraded_decisions_total") == 3
    assert metric(server.base_url, "risk_engine_store_errors_total") >= 3
    assert metric(server.base_url, "risk_engine_challenge_results_total", outcome="error") == 1
