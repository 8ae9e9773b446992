"""Fixtures for every test directory: a real Redis, when one answers.

Redis-backed tests skip when no Redis answers, unless RISK_ENGINE_REQUIRE_REDIS is
set (CI sets it): then they fail, so that a run without Redis cannot pass by skipping.
RISK_ENGINE_TEST_REDIS_URL overrides the default local URL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from risk_engine.profiles.redis import redact_url

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


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
