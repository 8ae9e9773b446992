"""The ProfileStore contract, checked identically on every backend."""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
import redis

from risk_engine.errors import ProfileStoreError
from risk_engine.profiles import (
    BurstCounts,
    DeviceRecord,
    MemoryStore,
    Place,
    Profile,
    ProfileStore,
    RedisStore,
    SessionRecord,
)
from risk_engine.profiles.model import (
    MAX_ACTIONS,
    MAX_COUNTRIES,
    MAX_NETWORKS,
    MAX_PENDING,
    Step,
    bump,
)
from risk_engine.profiles.redis_cluster import RedisClusterStore
from risk_engine.profiles.store import BURST_MAX_ENTRIES, BURST_WINDOW_S, BurstNote

NOW = 1_700_000_000.0


class Boom(Exception):
    """Raised by a test's update function."""


def fill(profile: Profile) -> None:
    """Give every field of ``profile`` a non-default value."""
    profile.created_ts = 1_690_000_000.5
    profile.last_ts = 1_690_000_100.25
    profile.last_seen_ts = 1_690_000_050.0
    profile.n_events = 17
    profile.n_seen = 12
    profile.places.append(Place(1_690_000_000.0, 48.8566, 2.3522, 5.0, "FR", "Paris"))
    profile.devices["dev-1"] = DeviceRecord(
        key="dev-1",
        has_id=True,
        ua_family="Firefox",
        ua_major="128",
        os_family="Linux",
        os_major="6",
        device_class="desktop",
        platform="x86_64",
        timezone="Europe/Paris",
        language="fr-FR",
        screen="1920x1080",
        first_ts=1_690_000_000.0,
        last_ts=1_690_000_100.0,
        count=9,
        trusted=True,
        trusted_until=1_700_000_000.0,
        acr="phr",
        auth_time=1_690_000_095.0,
        auth_network="203.0.113.0/24",
        action_digest="d" * 32,
    )
    profile.devices["ua:abc"] = DeviceRecord(key="ua:abc", has_id=False, count=1)
    profile.hours[5] = 2.0
    profile.hours[167] = 0.5
    bump(profile.countries, "FR", 1_690_000_000.0, MAX_COUNTRIES)
    bump(profile.countries, "FR", 1_690_000_010.0, MAX_COUNTRIES)
    bump(profile.cities, "FR/Paris", 1_690_000_000.0, MAX_COUNTRIES)
    bump(profile.networks, "203.0.113.0/24", 1_690_000_000.0, MAX_NETWORKS)
    bump(profile.ips, "ipk-1", 1_690_000_000.0, MAX_NETWORKS)
    bump(profile.families, "203.0.0.0/16@FR/Paris", 1_690_000_000.0, MAX_NETWORKS)
    bump(profile.payees, "payee-1", 1_690_000_000.0, MAX_NETWORKS)
    profile.steps.append(Step(1_690_000_050.0, "payee", "add_payee", "s-1", "payee-1"))
    bump(profile.actions, "transfer", 1_690_000_000.0, MAX_ACTIONS)
    profile.amounts.extend([12.5, 990.0])
    profile.failures.append(1_690_000_020.0)
    profile.recent.append(1_690_000_030.0)
    profile.sessions["s-1"] = SessionRecord(
        ts=1_690_000_100.0,
        ip_key="ipk-1",
        network="203.0.113.0/24",
        device_key="dev-1",
        country="FR",
        latitude=48.85,
        longitude=2.35,
        accuracy_km=10.0,
        place="home",
        acr="mfa",
        auth_time=1_690_000_090.0,
        action_digest="a" * 32,
        start_ts=1_690_000_080.0,
    )
    profile.sessions["s-2"] = SessionRecord(1_690_000_101.0, "ipk-2", "n", "ua:abc", "DE")
    profile.pending["evt-1"] = {
        "device_key": "dev-1",
        "amount": 10.5,
        "nested": {"places": [1, 2.5, "x"]},
        "none": None,
    }
    bump(profile.challenged, "transfer\x00dev-1", 1_690_000_050.0, MAX_PENDING)
    profile.note_window("ip:ipk-1", 1_690_000_000.0)


def increment(profile: Profile) -> int:
    profile.n_seen += 1
    return profile.n_seen


def test_first_update_sees_a_fresh_profile(store: ProfileStore) -> None:
    assert store.get("alice") is None
    seen = store.update("alice", lambda p: (p.user_key, p.is_new, p == Profile("alice")))
    assert seen == ("alice", True, True)
    assert store.get("alice") == Profile("alice")


def test_update_persists_every_field(store: ProfileStore) -> None:
    expected = Profile("ålice:1")
    fill(expected)
    # The round trip below is only meaningful if ``fill`` really touches every field.
    fresh = Profile("ålice:1")
    untouched = [
        f.name
        for f in dataclasses.fields(Profile)
        if f.name not in ("user_key", "version")
        and getattr(expected, f.name) == getattr(fresh, f.name)
    ]
    assert untouched == []
    # The ref and data key are random: every fresh profile has its own.
    assert (expected.ref, expected.data_key) != (fresh.ref, fresh.data_key)
    # dumps() serialises the dataclass directly: it must say exactly what to_dict() says.
    assert orjson.loads(expected.dumps()) == expected.to_dict()

    store.update("ålice:1", fill)

    assert store.get("ålice:1") == expected
    assert store.get("bob") is None
    # Stored, not made again on each read: what was sealed under the key stays openable.
    first, again = store.get("ålice:1"), store.get("ålice:1")
    assert first is not None and again is not None
    assert (first.ref, first.data_key) == (again.ref, again.data_key)
    assert store.sealing_keys() == {first.ref: first.data_key}


def test_update_returns_fn_value_and_reads_the_last_write(store: ProfileStore) -> None:
    assert store.update("alice", increment) == 1
    assert store.update("alice", increment) == 2
    assert store.update("alice", lambda p: p.n_seen) == 2
    stored = store.get("alice")
    assert stored is not None and stored.n_seen == 2


def test_exception_in_fn_propagates_unchanged(store: ProfileStore) -> None:
    store.update("alice", increment)
    error = Boom("no")

    def fail(profile: Profile) -> None:
        profile.n_seen = 99
        profile.devices["dev-x"] = DeviceRecord(key="dev-x", has_id=True)
        raise error

    with pytest.raises(Boom) as excinfo:
        store.update("alice", fail)
    assert excinfo.value is error

    stored = store.get("alice")
    assert stored is not None
    if isinstance(store, MemoryStore):
        # Documented: the memory store mutates in place, so a failed fn's changes stay.
        assert stored.n_seen == 99 and "dev-x" in stored.devices
    else:
        # Serialising stores roll back: the profile is exactly as before the call.
        assert stored.n_seen == 1 and stored.devices == {}


def explode(profile: Profile) -> None:
    profile.n_seen = 5
    raise Boom("no")


def test_exception_in_fn_on_a_new_user(store: ProfileStore) -> None:
    with pytest.raises(Boom):
        store.update("carol", explode)
    # No store keeps a profile that a failed update would have created (an outcome for
    # an erased user relies on it).
    assert store.get("carol") is None
    # The failed call left no transaction or watch behind.
    assert store.update("carol", increment) == 1


def test_delete(store: ProfileStore) -> None:
    store.update("alice", increment)
    assert store.delete("alice") is True
    assert store.get("alice") is None
    assert store.delete("alice") is False
    assert store.update("alice", increment) == 1


def test_count(store: ProfileStore) -> None:
    assert store.count() == 0
    for user in ("a", "b", "c"):
        store.update(user, increment)
    store.update("a", increment)
    assert store.count() == 3
    store.delete("b")
    assert store.count() == 2


def test_burst_counts_distinct_users_and_failures(store: ProfileStore) -> None:
    ip, other_ip, net = "ipk-1", "ipk-2", "203.0.113.0/24"
    store.record_burst(ip, net, "u:1", NOW - 10, True)
    store.record_burst(ip, net, "u:2", NOW - 5, False)
    store.record_burst(ip, net, "u:1", NOW - 1, True)
    store.record_burst(other_ip, net, "u:3", NOW - 2, True)
    # Same event twice: two entries, not one (Redis members must stay distinct).
    store.record_burst(other_ip, net, "u:3", NOW - 2, True)

    counts = store.burst_counts(ip, net, NOW)
    assert (counts.ip_users, counts.ip_failures) == (2, 2)
    assert (counts.network_users, counts.network_failures) == (3, 4)
    assert store.burst_counts("ipk-unknown", "198.51.100.0/24", NOW) == BurstCounts()


def test_burst_window_edges(store: ProfileStore) -> None:
    ip, net = "ipk-edge", "198.51.100.0/24"
    store.record_burst(ip, net, "exactly-a-window-old", NOW - BURST_WINDOW_S, True)
    store.record_burst(ip, net, "just-inside", NOW - BURST_WINDOW_S + 0.5, False)
    store.record_burst(ip, net, "at-now", NOW, True)
    store.record_burst(ip, net, "in-the-future", NOW + 1, True)

    counts = store.burst_counts(ip, net, NOW)
    assert (counts.ip_users, counts.ip_failures) == (2, 1)
    assert (counts.network_users, counts.network_failures) == (2, 1)


def test_burst_entries_are_capped_per_key(store: ProfileStore) -> None:
    for i in range(BURST_MAX_ENTRIES + 40):
        store.record_burst("ipk-flood", "net-flood", f"user-{i}", NOW - 1000 + i, i % 2 == 0)
    counts = store.burst_counts("ipk-flood", "net-flood", NOW)
    assert counts.ip_users == BURST_MAX_ENTRIES
    assert counts.network_users == BURST_MAX_ENTRIES


def test_update_event_counts_before_and_notes_after(store: ProfileStore) -> None:
    ip, net = "ipk-ev", "192.0.2.0/24"
    seen: list[tuple[BurstCounts, int]] = []

    def step(profile: Profile, bursts: BurstCounts) -> int:
        profile.n_seen += 1
        seen.append((bursts, profile.n_seen))
        return profile.n_seen

    assert store.update_event(BurstNote(ip, net, "u:1", NOW - 30, True), step) == 1
    assert store.update_event(BurstNote(ip, net, "u:2", NOW - 20, False), step) == 1
    assert store.update_event(BurstNote("ipk-other", net, "u:1", NOW - 10, True), step) == 2
    # Each event's counts exclude itself and include every earlier one.
    assert [bursts for bursts, _ in seen] == [
        BurstCounts(0, 0, 0, 0),
        BurstCounts(1, 1, 1, 1),
        BurstCounts(0, 0, 2, 1),
    ]
    # The same windows that burst_counts reads, and the same profiles that get reads.
    assert store.burst_counts(ip, net, NOW) == BurstCounts(2, 1, 2, 2)
    stored = store.get("u:1")
    assert stored is not None and stored.n_seen == 2


def test_update_event_that_fails_notes_nothing(store: ProfileStore) -> None:
    ip, net = "ipk-fail", "198.51.100.0/24"
    store.update_event(BurstNote(ip, net, "alice", NOW - 5, False), lambda p, b: increment(p))

    def fail(profile: Profile, bursts: BurstCounts) -> None:
        profile.n_seen = 99
        raise Boom("no")

    with pytest.raises(Boom):
        store.update_event(BurstNote(ip, net, "alice", NOW - 1, True), fail)
    # The failed event counts nowhere; the next one sees only the first.
    counts = store.update_event(
        BurstNote(ip, net, "bob", NOW, False), lambda profile, bursts: bursts
    )
    assert counts == BurstCounts(1, 0, 1, 0)
    stored = store.get("alice")
    assert stored is not None
    expected_seen = 99 if isinstance(store, MemoryStore) else 1
    assert stored.n_seen == expected_seen


def test_concurrent_update_events_lose_nothing(store: ProfileStore) -> None:
    def step(i: int) -> int:
        note = BurstNote(f"ipk-{i % 4}", "203.0.113.0/24", "hot", NOW + i, False)
        return store.update_event(note, lambda profile, bursts: increment(profile))

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(step, range(120)))
    assert sorted(results) == list(range(1, 121))
    counts = store.burst_counts("ipk-0", "203.0.113.0/24", NOW + 200)
    assert (counts.ip_users, counts.network_users) == (1, 1)


def test_challenge_save_load_claim(store: ProfileStore) -> None:
    now = time.time()
    store.save_challenge("ch-1", b'{"user": "alice"}', 60.0, now)

    assert store.load_challenge("ch-1", now + 1) == b'{"user": "alice"}'
    assert store.load_challenge("ch-unknown", now) is None
    assert store.claim_challenge("ch-1", now + 1) is True
    assert store.claim_challenge("ch-1", now + 2) is False
    # Used, still readable until it expires: the API tells "used" from "unknown".
    assert store.load_challenge("ch-1", now + 3) == b'{"user": "alice"}'
    assert store.claim_challenge("ch-unknown", now) is False


def test_challenge_expiry(store: ProfileStore) -> None:
    now = time.time()
    store.save_challenge("ch-2", b"record", 60.0, now)
    assert store.load_challenge("ch-2", now + 59.9) == b"record"
    assert store.load_challenge("ch-2", now + 60.0) is None
    assert store.claim_challenge("ch-2", now + 61.0) is False
    # The failed claim did not consume it: still claimable while live.
    assert store.claim_challenge("ch-2", now + 30.0) is True


def test_saving_a_challenge_again_replaces_it(store: ProfileStore) -> None:
    now = time.time()
    store.save_challenge("ch-3", b"first", 60.0, now)
    assert store.claim_challenge("ch-3", now) is True
    store.save_challenge("ch-3", b"second", 60.0, now)
    assert store.load_challenge("ch-3", now) == b"second"
    assert store.claim_challenge("ch-3", now) is True


def test_purge(store: ProfileStore) -> None:
    store.update("a", increment)
    store.update("b", increment)
    assert store.purge(older_than=time.time() - 3600) == 0
    assert store.count() == 2

    removed = store.purge(older_than=time.time() + 1)
    if isinstance(store, RedisStore | RedisClusterStore):
        # Redis expires profiles by their TTL (see test_redis_profile_has_retention_ttl).
        assert removed == 0
        assert store.count() == 2
    else:
        assert removed == 2
        assert store.count() == 0
        assert store.get("a") is None


def test_concurrent_updates_of_one_user_lose_nothing(store: ProfileStore) -> None:
    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(lambda _: store.update("hot", increment), range(200)))
    stored = store.get("hot")
    assert stored is not None and stored.n_seen == 200
    # Every committed run saw the one before it: the returned values are 1..200.
    assert sorted(results) == list(range(1, 201))


def test_concurrent_claims_have_one_winner(store: ProfileStore) -> None:
    now = time.time()
    store.save_challenge("ch-race", b"record", 60.0, now)
    workers = 32
    barrier = threading.Barrier(workers)

    def claim(_: int) -> bool:
        barrier.wait()
        return store.claim_challenge("ch-race", now + 1)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(claim, range(workers)))
    assert outcomes.count(True) == 1


def test_redis_profile_has_retention_ttl(redis_url: str, redis_prefix: str) -> None:
    store = RedisStore(redis_url, prefix=redis_prefix, retention_days=2.0)
    client = redis.Redis.from_url(redis_url)
    try:
        store.update("alice", increment)
        ttl = client.ttl(f"{redis_prefix}:profile:alice")
        assert 2 * 86400 - 5 <= ttl <= 2 * 86400
        store.save_challenge("ch", b"r", 30.0, time.time())
        assert 0 < client.pttl(f"{redis_prefix}:challenge:ch") <= 30_000
    finally:
        client.close()
        store.close()


def test_redis_errors_become_profile_store_errors(redis_url: str, redis_prefix: str) -> None:
    store = RedisStore(redis_url, prefix=redis_prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        # A key of the wrong type makes Redis answer WRONGTYPE (a ResponseError).
        client.set(f"{redis_prefix}:challenge:ch", b"not a hash")
        with pytest.raises(ProfileStoreError, match="load_challenge failed: ResponseError"):
            store.load_challenge("ch", time.time())
    finally:
        client.close()
        store.close()


def test_redis_update_retries_are_bounded(redis_url: str, redis_prefix: str) -> None:
    store = RedisStore(redis_url, prefix=redis_prefix)
    store.watch_tries = 3
    client = redis.Redis.from_url(redis_url)
    runs = 0

    def overtaken(profile: Profile) -> None:
        # Another writer commits while this update is between its read and EXEC.
        nonlocal runs
        runs += 1
        client.set(f"{redis_prefix}:profile:alice", Profile("alice", n_seen=100 + runs).dumps())
        profile.n_seen = -1

    try:
        with pytest.raises(ProfileStoreError, match="lost 3 races"):
            store.update("alice", overtaken)
        assert runs == 3
        stored = store.get("alice")
        assert stored is not None and stored.n_seen == 103
    finally:
        client.close()
        store.close()


def test_delete_erases_the_users_bursts_challenges_and_events(store: ProfileStore) -> None:
    ip, net = "ipk-shared", "198.51.100.0/24"

    def hold(profile: Profile, bursts: BurstCounts) -> None:
        profile.n_seen += 1
        profile.pending["evt-held"] = {"ts": NOW, "challenge_id": "ch-held"}

    store.update_event(BurstNote(ip, net, "victim", NOW - 20, True, "evt-v"), hold)
    store.update_event(BurstNote("ipk-own", net, "victim", NOW - 15, False, "evt-v2"), hold)
    store.update_event(
        BurstNote(ip, net, "other", NOW - 10, False, "evt-o"), lambda p, b: increment(p)
    )
    store.save_challenge("ch-held", b"{}", 60.0, NOW)
    store.save_challenge("ch-other", b"{}", 60.0, NOW)
    assert store.burst_counts(ip, net, NOW) == BurstCounts(2, 1, 2, 1)
    stored = store.get("victim")
    assert stored is not None and set(stored.windows) == {f"ip:{ip}", "ip:ipk-own", f"net:{net}"}

    assert store.delete("victim") is True
    assert store.get("victim") is None
    # Only the other user's entries are left in the windows they shared.
    assert store.burst_counts(ip, net, NOW) == BurstCounts(1, 0, 1, 0)
    assert store.burst_counts("ipk-own", "203.0.113.0/24", NOW) == BurstCounts(0, 0, 0, 0)
    assert store.load_challenge("ch-held", NOW) is None
    assert store.load_challenge("ch-other", NOW) == b"{}"
    assert store.label_event("evt-v", "confirmed_fraud") is None
    assert store.label_event("evt-v2", "confirmed_fraud") is None
    assert store.label_event("evt-o", "confirmed_fraud") == ("other", "confirmed_fraud", True)
    assert store.delete("victim") is False


def test_label_event_sets_one_label_per_kept_event(store: ProfileStore) -> None:
    store.update_event(BurstNote("ipk", "n", "alice", NOW, False, "evt-1"), lambda p, b: None)
    # Without an event id nothing is kept (a backtest, a training replay).
    store.update_event(BurstNote("ipk", "n", "alice", NOW, False), lambda p, b: None)
    assert store.label_event("", "confirmed_fraud") is None
    assert store.label_event("evt-unknown", "confirmed_fraud") is None
    assert store.label_event("evt-1", "confirmed_legit") == ("alice", "confirmed_legit", True)
    assert store.label_event("evt-1", "confirmed_legit") == ("alice", "confirmed_legit", False)
    assert store.label_event("evt-1", "confirmed_fraud") == ("alice", "confirmed_legit", False)
    # The same id decided again (another user's, or replayed) keeps its first owner.
    store.update_event(BurstNote("ipk", "n", "bob", NOW, False, "evt-1"), lambda p, b: None)
    assert store.label_event("evt-1", "confirmed_legit") == ("alice", "confirmed_legit", False)


def test_concurrent_labels_set_exactly_one(store: ProfileStore) -> None:
    store.update_event(BurstNote("ipk", "n", "alice", NOW, False, "evt-race"), lambda p, b: None)
    labels = ["confirmed_fraud", "confirmed_legit"] * 8
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda label: store.label_event("evt-race", label), labels))
    assert all(r is not None for r in results)
    assert sum(r.new for r in results if r is not None) == 1
    assert len({r.label for r in results if r is not None}) == 1
