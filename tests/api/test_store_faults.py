"""Store faults against a real server: a frozen Redis (SIGSTOP) and a failing SQLite store."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from risk_engine.api import create_app
from risk_engine.assembly import build_engine
from risk_engine.config import Settings
from risk_engine.profiles import Profile, SQLiteStore
from tests.unit.test_sqlite_store import corrupt_overflow_pages

EventFactory = Callable[..., dict[str, Any]]
Serve = Callable[..., Any]

# What the test tolerates on a shared 2-core machine around the server's own bound
# (the store timeout, 50 ms by default): far below the seconds a blocked loop took.
SLACK_S = 0.5


def timed(
    http: httpx.Client, method: str, path: str, **kwargs: Any
) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = http.request(method, path, **kwargs)
    return response, time.monotonic() - started


def test_a_frozen_redis_answers_degraded_quickly_and_blocks_no_other_request(
    serve: Serve,
    make_event: EventFactory,
    throwaway_redis: tuple[str, subprocess.Popen[bytes]],
    api_key: str,
) -> None:
    url, redis_process = throwaway_redis
    server = serve(RISK_ENGINE_STORE=url)
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
        assert (
            http.post("/v1/decisions", json=make_event(user_id="u-0")).json()["degraded"] is False
        )
        redis_process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                decisions = list(
                    pool.map(
                        lambda i: timed(
                            http,
                            "POST",
                            "/v1/decisions",
                            json=make_event(user_id=f"u-{i % 5}", action="transfer", amount=5.0),
                        ),
                        range(40),
                    )
                )
                health = pool.submit(timed, http, "GET", "/healthz").result()
            elapsed = time.monotonic() - started
            for response, seconds in decisions:
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["degraded"] is True and body["decision"] == "step_up", body
                assert body["reasons"][0]["code"] == "degraded"
                assert seconds < SLACK_S, f"a decision took {seconds:.3f} s"
            assert health[0].status_code == 200 and health[1] < SLACK_S
            # Forty decisions on a blocked loop took about a second each.
            assert elapsed < 4 * SLACK_S, f"40 decisions took {elapsed:.2f} s"
            ready, seconds = timed(http, "GET", "/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["store"] == "failed"
            assert seconds < SLACK_S
        finally:
            redis_process.send_signal(signal.SIGCONT)
        # Thawed, the store is used again (after the pause the breaker keeps).
        deadline = time.monotonic() + 10
        while True:
            body = http.post("/v1/decisions", json=make_event(user_id="u-0")).json()
            if not body["degraded"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert body["degraded"] is False
        assert http.get("/readyz").status_code == 200


def test_readyz_reports_a_store_whose_writes_fail(
    make_settings: Callable[..., Settings],
    make_event: EventFactory,
    tmp_path: Path,
    api_key: str,
    admin_auth: dict[str, str],
) -> None:
    settings = make_settings()
    path = tmp_path / "profiles.db"
    store = SQLiteStore(path, checkpoint_every_s=None)
    victim = build_engine(settings, store=store, with_model=False).user_key("victim")

    def fatten(profile: Profile) -> None:
        for _ in range(200):
            # Random, so that the stored form's compression cannot shrink it.
            profile.ips[f"victim-{os.urandom(40).hex()}"] = [1.0, 0.0]

    store.update(victim, fatten)
    store.close()
    assert corrupt_overflow_pages(path, victim) >= 2
    auth = {"Authorization": f"Bearer {api_key}"}
    with TestClient(create_app(settings), headers=auth) as client:
        assert (
            client.post("/v1/decisions", json=make_event(user_id="alice")).json()["degraded"]
            is False
        )
        body = client.post("/v1/decisions", json=make_event(user_id="victim")).json()
        assert body["degraded"] is True and body["reasons"][0]["code"] == "degraded"
        # The ping still answers; the store is failing all the same, and readiness says so.
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["store"] == "failed"
        detail = client.get("/readyz", headers=admin_auth).json()["checks"]["store"]
        assert "corrupt" in detail
        metrics = client.get("/metrics", headers=admin_auth).text
        assert 'risk_engine_store_incidents_total{kind="update_undone"}' in metrics
