"""The Redis Cluster store beyond the store contract: corrupt records, key layout."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import cast

import pytest
from redis.cluster import RedisCluster

from risk_engine.profiles.model import Profile
from risk_engine.profiles.redis_cluster import RedisClusterStore
from risk_engine.profiles.store import BurstNote

pytestmark = pytest.mark.slow


@pytest.fixture
def prefix() -> str:
    return f"risk-engine-test-{uuid.uuid4().hex}"


@pytest.fixture
def store(redis_cluster_url: str, prefix: str) -> Iterator[RedisClusterStore]:
    out = RedisClusterStore(redis_cluster_url, prefix=prefix)
    yield out
    out.close()


@pytest.fixture
def cluster(redis_cluster_url: str) -> Iterator[RedisCluster]:
    client = RedisCluster.from_url(redis_cluster_url.replace("redis+cluster://", "redis://"))
    yield client
    client.close()


def test_a_changed_digit_is_quarantined_and_the_user_starts_afresh(
    store: RedisClusterStore, cluster: RedisCluster, prefix: str
) -> None:
    # Before: the cluster store raised on the corrupt record at every event of the
    # user (a 503 for ever), where the one-node store quarantines it.
    incidents: list[str] = []
    store.incidents.listen(incidents.append)
    key = f"{prefix}:profile:{{alice}}"
    cluster.set(key, Profile("alice", n_seen=119).stored())
    stored = cast(bytes, cluster.get(key))
    damaged = stored[:-1] + bytes([stored[-1] ^ 0x01])
    cluster.set(key, damaged)
    assert store.get("alice") is None
    note = BurstNote("ip", "net", "alice", 1.0, False)
    assert store.update_event(note, lambda p, b: p.n_seen) == 0
    assert incidents == ["quarantined"]
    assert cluster.get(f"{prefix}:quarantine:{{alice}}") == damaged
    assert Profile.loads(cast(bytes, cluster.get(key))).n_seen == 0


def test_erasure_takes_the_quarantined_record_too(
    store: RedisClusterStore, cluster: RedisCluster, prefix: str
) -> None:
    key = f"{prefix}:profile:{{bob}}"
    cluster.set(key, b"\x00garbage")
    assert store.update("bob", lambda p: p.n_seen) == 0
    assert cluster.get(f"{prefix}:quarantine:{{bob}}") == b"\x00garbage"
    assert store.delete("bob")
    assert cluster.get(f"{prefix}:quarantine:{{bob}}") is None
    assert cluster.get(key) is None


def test_keys_carry_the_hash_tags_that_keep_a_user_in_one_slot(
    store: RedisClusterStore, cluster: RedisCluster, prefix: str
) -> None:
    store.update_event(
        BurstNote("ipk", "198.51.100.0/24", "carol", 5.0, False, event_id="e-1"),
        lambda p, b: None,
    )
    keys = {k.decode() for k in cluster.scan_iter(match=f"{prefix}:*")}
    assert {
        f"{prefix}:profile:{{carol}}",
        f"{prefix}:user-events:{{carol}}",
        f"{prefix}:burst:ip:{{ipk}}",
        f"{prefix}:burst:net:{{198.51.100.0/24}}",
        f"{prefix}:event:{{e-1}}",
    } <= keys
    # The user's transaction spans these two keys: one slot, or the cluster refuses it.
    assert cluster.keyslot(f"{prefix}:profile:{{carol}}") == cluster.keyslot(
        f"{prefix}:user-events:{{carol}}"
    )
