"""The ``store`` fixture: each contract test runs once per backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from risk_engine.profiles import MemoryStore, ProfileStore, RedisStore, SQLiteStore


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProfileStore]:
    """A fresh, empty store of each backend (Redis under a prefix of its own)."""
    backend: ProfileStore
    if request.param == "memory":
        backend = MemoryStore()
    elif request.param == "sqlite":
        backend = SQLiteStore(tmp_path / "profiles.db")
    else:
        # Asked for here, not in the signature, so that only the Redis case skips.
        url = request.getfixturevalue("redis_url")
        backend = RedisStore(url, prefix=request.getfixturevalue("redis_prefix"))
    yield backend
    backend.close()
