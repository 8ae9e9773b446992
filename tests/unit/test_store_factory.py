"""open_store: every accepted URL form, and clear refusals."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from risk_engine.errors import ConfigurationError, ProfileStoreError
from risk_engine.profiles import MemoryStore, RedisStore, SQLiteStore, open_store
from risk_engine.profiles.redis_cluster import RedisClusterStore, is_cluster_url


def test_memory() -> None:
    store = open_store("memory://")
    assert isinstance(store, MemoryStore)
    store.ping()


def test_sqlite_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///data/profiles.db")
    try:
        assert isinstance(store, SQLiteStore)
        assert store.path == Path("data/profiles.db")
        assert (tmp_path / "data" / "profiles.db").is_file()
    finally:
        store.close()


def test_sqlite_absolute_path(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "dir" / "profiles.sqlite3"
    store = open_store(f"sqlite:///{target}", retention_days=30)
    try:
        assert isinstance(store, SQLiteStore)
        assert store.path == target
        assert target.is_file()
    finally:
        store.close()


@pytest.mark.parametrize("name", ["profiles.db", "profiles.sqlite", "profiles.sqlite3", "P.DB"])
def test_bare_sqlite_path(tmp_path: Path, name: str) -> None:
    store = open_store(str(tmp_path / name))
    try:
        assert isinstance(store, SQLiteStore)
        assert (tmp_path / name).is_file()
    finally:
        store.close()


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "redis://user:pw@cache.internal:6380/2", "rediss://h/0"]
)
def test_redis_urls_open_without_connecting(url: str) -> None:
    store = open_store(url)
    assert isinstance(store, RedisStore)
    store.close()


@pytest.mark.parametrize(
    "url",
    [
        "",
        "postgres://db/profiles",
        "memory://somewhere",
        "profiles.json",
        "sqlite://",
        "sqlite:///",
        "sqlite://host/profiles.db",
        "redis",
    ],
)
def test_unsupported_url_is_a_configuration_error_naming_it(url: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        open_store(url)
    assert repr(url) in str(excinfo.value)


def test_refusal_does_not_echo_a_password() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        open_store("mysql://admin:s3cret@db/profiles")
    assert "s3cret" not in str(excinfo.value)
    assert "admin:***@db" in str(excinfo.value)


def test_bad_redis_port_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unusable Redis URL"):
        open_store("redis://127.0.0.1:notaport/0")


def test_nonpositive_retention_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="retention"):
        open_store(str(tmp_path / "p.db"), retention_days=0)


def test_ping_without_redis_fails_fast_and_hides_the_password() -> None:
    store = open_store("redis://:s3cret@127.0.0.1:1/0")
    started = time.monotonic()
    try:
        with pytest.raises(ProfileStoreError) as excinfo:
            store.ping()
    finally:
        store.close()
    assert time.monotonic() - started < 2.0
    message = str(excinfo.value)
    assert "redis://:***@127.0.0.1:1/0" in message and "s3cret" not in message
    assert excinfo.value.status_code == 503


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://127.0.0.1:7000",
        "rediss+cluster://:pw@cache.example:7000",
        "redis://127.0.0.1:7000/0?cluster=true",
    ],
)
def test_cluster_urls_open_the_cluster_store_without_connecting(url: str) -> None:
    store = open_store(url)
    assert isinstance(store, RedisClusterStore)
    store.close()


def test_a_plain_redis_url_is_not_a_cluster() -> None:
    assert not is_cluster_url("redis://127.0.0.1:6379/0")
    assert not is_cluster_url("redis://127.0.0.1:6379/0?cluster=false")


@given(user_key=st.text(alphabet="0123456789abcdef", min_size=16, max_size=16))
def test_a_users_transaction_keys_share_one_slot(user_key: str) -> None:
    store = RedisClusterStore("redis+cluster://127.0.0.1:7000", prefix="p")
    slot = key_slot(store._profile_key(user_key).encode())
    assert key_slot(store._user_events_key(user_key).encode()) == slot
