"""Fixtures for every test directory: a real Redis, when one answers; a real browser.

Redis-backed tests skip when no Redis answers, unless RISK_ENGINE_REQUIRE_REDIS is
set (CI sets it): then they fail, so that a run without Redis cannot pass by skipping.
RISK_ENGINE_TEST_REDIS_URL overrides the default local URL.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from risk_engine.compiled import check_fresh
from risk_engine.profiles.redis_common import redact_url

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to test a compiled core older than its sources: the tests would run old code."""
    try:
        check_fresh()
    except RuntimeError as exc:
        raise pytest.UsageError(str(exc)) from None


def _client(url: str) -> redis.Redis:
    # No retries: an absent Redis should cost one refused connection, not seconds.
    return redis.Redis.from_url(
        url, socket_connect_timeout=1.0, socket_timeout=1.0, retry=Retry(NoBackoff(), 0)
    )


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of a Redis that answers; skips, or fails under RISK_ENGINE_REQUIRE_REDIS."""
    url = os.environ.get("RISK_ENGINE_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    client = _client(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        reason = f"no Redis answers at {redact_url(url)} ({type(exc).__name__}: {exc})"
        if "RISK_ENGINE_REQUIRE_REDIS" in os.environ:
            pytest.fail(
                f"{reason}, and RISK_ENGINE_REQUIRE_REDIS is set, so the Redis tests must"
                " run: start Redis (or point RISK_ENGINE_TEST_REDIS_URL at one), or unset"
                " RISK_ENGINE_REQUIRE_REDIS to let them skip",
                pytrace=False,
            )
        pytest.skip(f"{reason}; set RISK_ENGINE_REQUIRE_REDIS=1 to make this a failure")
    finally:
        client.close()
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix that no other test uses; every key under it is deleted afterwards."""
    prefix = f"risk-engine-test-{uuid.uuid4().hex}"
    yield prefix
    client = _client(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# -- a real browser -------------------------------------------------------------------------

CHROMEDRIVER = "/usr/bin/chromedriver"
LOCAL_HOSTS = frozenset({"127.0.0.1"})


@dataclass
class Browser:
    """A Selenium-driven headless Chromium and what it saw: requests, console errors."""

    driver: Any
    artifacts: Path

    def get(self, url: str) -> None:
        self.driver.get(url)

    def wait_for(self, script: str, timeout: float = 20.0) -> Any:
        """The first truthy value of ``script`` (JavaScript returning a value), or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.driver.execute_script(script)
            if value:
                return value
            time.sleep(0.2)
        return None

    def outside_requests(self) -> list[str]:
        """URLs the pages asked for on a host other than 127.0.0.1, since the last call."""
        urls = []
        for entry in self.driver.get_log("performance"):
            message = orjson.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return [
            u
            for u in urls
            if not u.startswith(("data:", "blob:")) and urlsplit(u).hostname not in LOCAL_HOSTS
        ]

    def console_errors(self) -> list[str]:
        """The browser console's errors since the last call."""
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def screenshot(self, name: str) -> Path:
        """Save a PNG of the page among the test's artifacts."""
        path = self.artifacts / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """Headless Debian Chromium that can reach 127.0.0.1 only.

    Every other host name resolves to nothing, so a page that needs the internet
    shows it. `make test` installs chromium and chromium-driver (Debian packages);
    without them the browser tests skip, unless RISK_ENGINE_REQUIRE_BROWSER is set
    (CI sets it): then they fail. Screenshots go to $RISK_ENGINE_TEST_ARTIFACTS
    when set (kept), else to the test's tmp_path.
    """
    if not os.path.exists(CHROMEDRIVER):
        reason = f"no {CHROMEDRIVER}: install Debian's chromium and chromium-driver"
        if "RISK_ENGINE_REQUIRE_BROWSER" in os.environ:
            pytest.fail(f"{reason} (RISK_ENGINE_REQUIRE_BROWSER is set)", pytrace=False)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService

    options = webdriver.ChromeOptions()
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1024",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=ChromeService(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    kept = os.environ.get("RISK_ENGINE_TEST_ARTIFACTS")
    artifacts = Path(kept) if kept else tmp_path
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        yield Browser(driver, artifacts)
    finally:
        driver.quit()


# -- a real PostgreSQL ----------------------------------------------------------------------

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The URL of a PostgreSQL that answers; skips, or fails under RISK_ENGINE_REQUIRE_POSTGRES."""
    import psycopg

    url = os.environ.get("RISK_ENGINE_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.Error as exc:
        reason = f"no PostgreSQL answers at {url} ({type(exc).__name__}: {exc})"
        if "RISK_ENGINE_REQUIRE_POSTGRES" in os.environ:
            pytest.fail(f"{reason}, and RISK_ENGINE_REQUIRE_POSTGRES is set", pytrace=False)
        pytest.skip(f"{reason}; set RISK_ENGINE_REQUIRE_POSTGRES=1 to make this a failure")
    return url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A URL whose connections see a schema of their own, dropped afterwards."""
    import psycopg

    schema = f"risk_engine_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in postgres_server_url else "?"
    yield f"{postgres_server_url}{separator}options=-csearch_path%3D{schema}"
    with psycopg.connect(postgres_server_url, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA {schema} CASCADE")


# -- a real Redis Cluster -------------------------------------------------------------------

CLUSTER_NODES = 3


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    import socket

    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis+cluster://`` of a real 3-node cluster of redis-server processes started here.

    Skips when redis-server or redis-cli is not installed, unless RISK_ENGINE_REQUIRE_REDIS.
    """
    import shutil
    import subprocess

    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        if "RISK_ENGINE_REQUIRE_REDIS" in os.environ:
            pytest.fail(
                "redis-server and redis-cli are needed, and RISK_ENGINE_REQUIRE_REDIS is set"
            )
        pytest.skip("redis-server or redis-cli is not installed")
    where = tmp_path_factory.mktemp("redis-cluster")
    ports = [_free_cluster_port() for _ in range(CLUSTER_NODES)]
    processes = []
    try:
        for port in ports:
            processes.append(
                subprocess.Popen(
                    [
                        server,
                        "--port", str(port),
                        "--bind", "127.0.0.1",
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", str(where / f"nodes-{port}.conf"),
                        "--dir", str(where),
                        "--save", "",
                        "--appendonly", "no",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        deadline = time.monotonic() + 20
        for port in ports:
            while not _answers(f"redis://127.0.0.1:{port}/0"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {port} did not start")
                time.sleep(0.05)
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for port in ports:
            node = _client(f"redis://127.0.0.1:{port}/0")
            try:
                while node.cluster("info").get("cluster_state") != "ok":  # type: ignore[no-untyped-call]
                    if time.monotonic() > deadline + 30:
                        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
                    time.sleep(0.1)
            finally:
                node.close()
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _answers(url: str) -> bool:
    client = _client(url)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
