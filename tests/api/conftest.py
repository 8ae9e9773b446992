"""Fixtures of the API tests: a real model, settings on tmp_path, in-process and real servers."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from risk_engine.api import create_app
from risk_engine.assembly import build_engine
from risk_engine.config import Settings
from risk_engine.engine import Engine
from risk_engine.errors import IncompatibleModelError
from risk_engine.model.artifact import default_model_path, load_artifact

API_KEY = "rek_test-key-for-the-api-tests"
API_KEY_SHA256 = hashlib.sha256(API_KEY.encode()).hexdigest()
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# The operator's key (scope admin): erasure, reload, model, metrics. API_KEY decides.
ADMIN_API_KEY = "rek_test-admin-key-for-the-api-tests"
ADMIN_API_KEY_SHA256 = hashlib.sha256(ADMIN_API_KEY.encode()).hexdigest()
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_API_KEY}"}
SECRET = "api-tests-secret-" + "0" * 32

# Addresses the bundled GeoLite2 City database places (checked in test_step_up).
OSLO_IPS = ("84.208.0.1", "84.208.0.2", "84.208.0.3")
SYDNEY_IP = "203.2.218.214"


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model; if it lags the feature code (being retrained), a small fresh one.

    The fallback trains on a seeded simulation through the real training code, so
    these tests exercise the service, not whichever artifact happens to be committed.
    """
    path = default_model_path()
    try:
        load_artifact(path)
        return path
    except IncompatibleModelError:
        pass
    from risk_engine.model.detector import DetectorParams
    from risk_engine.offline.simulate.simulator import SimulationConfig, write_simulation
    from risk_engine.offline.train import train

    work = tmp_path_factory.mktemp("model")
    events, labels = work / "events.jsonl", work / "labels.jsonl"
    write_simulation(SimulationConfig(users=30, days=7, seed=3), events, labels)
    out = work / "model.npz"
    train([events], out, labels=[labels], params=DetectorParams(n_estimators=50, seed=0))
    return out


@pytest.fixture
def make_settings(tmp_path: Path, model_path: Path) -> Callable[..., Settings]:
    """Settings on tmp_path (SQLite store, audit, feedback), auth on: API_KEY, ADMIN_API_KEY."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "store": f"sqlite:///{tmp_path / 'profiles.db'}",
            "var_dir": tmp_path / "var",
            "model_path": model_path,
            "secret": SECRET,
            "api_keys_sha256": [API_KEY_SHA256],
            "api_keys": {"ops": f"admin:{ADMIN_API_KEY_SHA256}"},
            # A writer process per app would start hundreds of interpreters here; the
            # process writer is tested in test_decision_log_api.py, test_decision_log_process.py
            # and by every real server (test_server.py, the browser test).
            "decision_log_writer": "thread",
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture(scope="session")
def shared_engine(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[Engine]:
    """One engine (SQLite store) for the apps that need no engine of their own: fast set-up.

    Tests on it use fresh user ids, so sharing the profiles changes nothing they see.
    """
    where = tmp_path_factory.mktemp("shared")
    engine = build_engine(
        Settings(
            store=f"sqlite:///{where / 'profiles.db'}",
            var_dir=where,
            model_path=model_path,
            secret=SECRET,
        )
    )
    yield engine
    engine.store.close()


@pytest.fixture
def client(settings: Settings, shared_engine: Engine) -> Iterator[TestClient]:
    """The app in-process (its lifespan run, the shared engine), authenticated with API_KEY."""
    with TestClient(create_app(settings, engine=shared_engine), headers=AUTH) as test_client:
        yield test_client


def flush_audit(client: TestClient) -> None:
    """Wait for the app's audit writer thread: what the requests so far audited is in the file."""
    client.app.state.service.flush_audit()  # type: ignore[attr-defined]


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _make_event(**fields: Any) -> dict[str, Any]:
    """A valid contract event (now, in Oslo, on device d-1), with ``fields`` overriding."""
    event: dict[str, Any] = {
        "event_id": "e-" + uuid.uuid4().hex[:16],
        "timestamp": stamp(datetime.now(UTC)),
        "user_id": "u-" + uuid.uuid4().hex[:12],
        "action": "login",
        "ip": OSLO_IPS[0],
        "session_id": "s-1",
        "device": {
            "id": "d-1",
            "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.4 Safari/605.1.15",
            "platform": "MacIntel",
            "timezone": "Europe/Oslo",
            "language": "nb-NO",
            "screen": "1440x900",
        },
    }
    event.update(fields)
    return event


def _history(user_id: str, *, days: int = 8, now: datetime | None = None) -> list[dict[str, Any]]:
    """Normal activity for one user: logins and views from Oslo on one device, daily."""
    now = now or datetime.now(UTC)
    events = []
    for day in range(days, 0, -1):
        when = now - timedelta(days=day, hours=1)
        for i, action in enumerate(("login", "view_account", "transfer")):
            extra: dict[str, Any] = {"amount": 120.0, "currency": "NOK"} if i == 2 else {}
            events.append(
                _make_event(
                    user_id=user_id,
                    action=action,
                    session_id=f"s-day{day}",
                    ip=OSLO_IPS[day % 2],
                    timestamp=stamp(when + timedelta(minutes=3 * i)),
                    **extra,
                )
            )
    return events


EventFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def make_event() -> EventFactory:
    """``make_event(**fields)``: a valid event now, in Oslo, on device d-1."""
    return _make_event


@pytest.fixture
def make_history() -> Callable[..., list[dict[str, Any]]]:
    """``make_history(user_id, days=8)``: a week of normal activity from Oslo."""
    return _history


@pytest.fixture
def api_key() -> str:
    return API_KEY


@pytest.fixture
def admin_api_key() -> str:
    """A key of scope admin (configured beside API_KEY, which has scope decide)."""
    return ADMIN_API_KEY


@pytest.fixture
def admin_auth() -> dict[str, str]:
    """The Authorization header of ADMIN_API_KEY."""
    return dict(ADMIN_AUTH)


@pytest.fixture
def secret() -> str:
    """The hashing secret of every app and server here (user keys are derived from it)."""
    return SECRET


# -- real servers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A `risk-engine serve` subprocess on 127.0.0.1."""

    base_url: str
    process: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


def wait_healthy(base_url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Poll /healthz (answered once the lifespan has built the engine) until it answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before /healthz")
        try:
            if httpx.get(base_url + "/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {base_url} not ready within {timeout:.0f} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture
def serve(tmp_path: Path, model_path: Path) -> Iterator[Callable[..., Server]]:
    """Start `risk-engine serve` subprocesses (env: RISK_ENGINE_*); always stopped."""
    started: list[subprocess.Popen[bytes]] = []
    cli = Path(sys.executable).with_name("risk-engine")

    def start(*args: str, **env_overrides: str | None) -> Server:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RISK_ENGINE_")}
        env.update(
            RISK_ENGINE_VAR_DIR=str(tmp_path / "var"),
            RISK_ENGINE_STORE=f"sqlite:///{tmp_path / 'profiles.db'}",
            RISK_ENGINE_MODEL_PATH=str(model_path),
            RISK_ENGINE_SECRET=SECRET,
            RISK_ENGINE_API_KEYS_SHA256=f'["{API_KEY_SHA256}"]',
            RISK_ENGINE_API_KEY_OPS=f"admin:{ADMIN_API_KEY_SHA256}",
        )
        for name, value in env_overrides.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        log_path = tmp_path / f"server-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(cli), "serve", "--port", str(port), *args],
                env=env,
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(base_url, process)
        except RuntimeError as exc:
            stop(process)
            raise RuntimeError(f"{exc}\n{log_path.read_text(errors='replace')}") from None
        return Server(base_url, process, env, log_path)

    yield start
    for process in started:
        stop(process)


@pytest.fixture
def throwaway_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of our own on a free port (killable without touching the shared one)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if "RISK_ENGINE_REQUIRE_REDIS" in os.environ:
            pytest.fail("redis-server is not installed, and RISK_ENGINE_REQUIRE_REDIS is set")
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the throwaway redis-server did not start") from None
                time.sleep(0.05)
        yield url, process
    finally:
        stop(process)
