"""Profile invariants: bounded collections and a lossless serialised form."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from risk_engine.profiles.model import (
    MAX_ACTIONS,
    MAX_AMOUNTS,
    MAX_CITIES,
    MAX_COUNTRIES,
    MAX_FAILURES,
    MAX_FAMILIES,
    MAX_IPS,
    MAX_NETWORKS,
    MAX_PAYEES,
    MAX_PLACES,
    MAX_RECENT,
    MAX_WINDOWS,
    Place,
    Profile,
    SessionRecord,
    Step,
    bump,
    push_bounded,
)

COUNTER_CAPS = {
    "countries": MAX_COUNTRIES,
    "cities": MAX_CITIES,
    "networks": MAX_NETWORKS,
    "ips": MAX_IPS,
    "families": MAX_FAMILIES,
    "actions": MAX_ACTIONS,
    "payees": MAX_PAYEES,
}
LIST_CAPS = {"amounts": MAX_AMOUNTS, "failures": MAX_FAILURES, "recent": MAX_RECENT}

# NaN and infinities are not JSON; every other float must survive the round trip.
finite = st.floats(allow_nan=False, allow_infinity=False)
# A small alphabet makes keys repeat (counting) as well as overflow the caps (eviction).
keys = st.one_of(st.text(alphabet="abcdefghij", min_size=1, max_size=2), st.text(max_size=6))
places = st.builds(
    Place,
    ts=finite,
    latitude=finite,
    longitude=finite,
    accuracy_km=finite,
    country=st.text(max_size=3),
    city=st.text(max_size=8),
)
bump_ops = st.tuples(st.just("bump"), st.sampled_from(sorted(COUNTER_CAPS)), keys, finite)
push_ops = st.tuples(st.just("push"), st.sampled_from(sorted(LIST_CAPS)), st.none(), finite)
place_ops = st.tuples(st.just("push"), st.just("places"), st.none(), places)
Op = tuple[str, str, str | None, float | Place]


@settings(deadline=None)
@given(st.lists(st.one_of(bump_ops, push_ops, place_ops), max_size=300))
def test_bounded_collections_round_trip(ops: list[Op]) -> None:
    caps = {**COUNTER_CAPS, **LIST_CAPS, "places": MAX_PLACES}
    profile = Profile("user")
    for op, name, key, value in ops:
        if op == "bump":
            assert key is not None and isinstance(value, float)
            bump(getattr(profile, name), key, value, caps[name])
        else:
            push_bounded(getattr(profile, name), value, caps[name])
        for field_name, cap in caps.items():
            assert len(getattr(profile, field_name)) <= cap

    assert Profile.loads(profile.dumps()) == profile
    # The fast dataclass serialisation says exactly what to_dict() says.
    assert orjson.loads(profile.dumps()) == profile.to_dict()


def test_a_profile_stored_before_sealing_gets_its_ref_and_key_on_read() -> None:
    legacy = Profile("alice", n_seen=3).to_dict()
    for name in ("ref", "data_key", "windows"):
        del legacy[name]
    profile = Profile.loads(orjson.dumps(legacy))
    assert profile.n_seen == 3 and profile.windows == {}
    assert profile.ref.startswith("r-") and len(bytes.fromhex(profile.data_key)) == 32
    # Written back with them: the next read finds the same ref and key.
    again = Profile.loads(profile.dumps())
    assert (again.ref, again.data_key) == (profile.ref, profile.data_key)


def test_note_window_keeps_the_most_recent_windows() -> None:
    profile = Profile("alice")
    for i in range(MAX_WINDOWS + 5):
        profile.note_window(f"ip:k{i}", float(i))
    profile.note_window("ip:k0", 1.0)  # evicted already: noted again, the stalest goes
    assert len(profile.windows) == MAX_WINDOWS
    assert "ip:k0" in profile.windows and "ip:k1" not in profile.windows
    profile.note_window(f"ip:k{MAX_WINDOWS + 4}", 0.0)  # an older note keeps the later time
    assert profile.windows[f"ip:k{MAX_WINDOWS + 4}"] == float(MAX_WINDOWS + 4)


def test_a_profile_stored_before_families_payees_and_steps_still_loads() -> None:
    profile = Profile("user")
    bump(profile.networks, "81.2.69.0/24", 1.0, MAX_NETWORKS)
    bump(profile.families, "81.2.0.0/16@GB/London", 1.0, MAX_FAMILIES)
    bump(profile.payees, "payee-key", 1.0, MAX_PAYEES)
    profile.steps.append(Step(1.0, "payee", "add_payee", "s-1", "payee-key"))
    profile.sessions["s-1"] = SessionRecord(1.0, "ip", "net", "dev", "GB", start_ts=1.0)
    old = orjson.loads(profile.dumps())
    for name in ("families", "payees", "steps"):
        del old[name]
    del old["sessions"]["s-1"]["start_ts"]

    loaded = Profile.loads(orjson.dumps(old))

    assert loaded.networks == profile.networks
    assert loaded.families == {} and loaded.payees == {} and loaded.steps == []
    assert loaded.sessions["s-1"].start_ts is None
    assert Profile.loads(profile.dumps()) == profile
