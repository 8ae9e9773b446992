"""The ``store`` fixture: each contract test runs once per backend."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from risk_engine.profiles import MemoryStore, ProfileStore, RedisStore, SQLiteStore
from risk_engine.profiles.factory import open_store


@pytest.fixture(
    params=["memory", "sqlite", "redis", pytest.param("redis-cluster", marks=pytest.mark.slow)]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProfileStore]:
    """A fresh, empty store of each backend (Redis under a prefix of its own)."""
    backend: ProfileStore
    if request.param == "memory":
        backend = MemoryStore()
    elif request.param == "sqlite":
        backend = SQLiteStore(tmp_path / "profiles.db")
    elif request.param == "redis":
        # Asked for here, not in the signature, so that only the Redis case skips.
        url = request.getfixturevalue("redis_url")
        backend = RedisStore(url, prefix=request.getfixturevalue("redis_prefix"))
    else:
        # A real cluster of three redis-server processes, keys under a prefix of this test.
        url = request.getfixturevalue("redis_cluster_url")
        backend = open_store(url, prefix=f"risk-engine-test-{uuid.uuid4().hex}")
    yield backend
    backend.close()
