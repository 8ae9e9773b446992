"""Burst windows: the incremental counts give exactly what a walk of the entries gives."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from risk_engine.profiles.bursts import TRACK_FROM, BurstTable, BurstWindow
from risk_engine.profiles.model import BurstCounts
from risk_engine.profiles.store import BURST_MAX_ENTRIES, BURST_WINDOW_S


def walked(window: BurstWindow, now: float) -> tuple[int, int]:
    """The definition, put another way: what follows the newest entry at or before
    the window's start, less the entries after ``now``."""
    entries = list(window.entries)
    start = now - BURST_WINDOW_S
    cut = max((i for i, entry in enumerate(entries) if entry[0] <= start), default=-1)
    tail = [entry for entry in entries[cut + 1 :] if entry[0] <= now]
    return len({entry[1] for entry in tail}), sum(entry[2] for entry in tail)


# One step: ("add", seconds after the previous entry (negative: out of order), user,
# failed), ("event", the same, counted at its own time before it is added, as the
# stores do), ("count", seconds after the newest entry (negative: into the past)) or
# ("trim", seconds after the newest entry).
gaps = st.one_of(
    st.floats(0, 60),
    st.floats(0, 4000),
    st.floats(-600, 0),
    st.floats(-4000, 0),
    st.sampled_from([0.0, BURST_WINDOW_S, -BURST_WINDOW_S]),
)
steps = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["add", "event"]),
            gaps,
            st.sampled_from(["u1", "u2", "u3", "u4", "u5"]),
            st.booleans(),
        ),
        st.tuples(
            st.just("count"),
            st.one_of(
                st.floats(0, 120),
                st.floats(-4000, 8000),
                st.sampled_from([0.0, BURST_WINDOW_S, -BURST_WINDOW_S]),
            ),
        ),
        st.tuples(st.just("trim"), st.floats(-100, 4000)),
    ),
    max_size=400,
)


@settings(max_examples=300, deadline=None)
@given(
    steps=steps,
    prefill=st.integers(0, BURST_MAX_ENTRIES + 40),
    block=st.sampled_from([1, 2, 16, 600]),
    rng=st.randoms(use_true_random=False),
)
def test_counts_match_the_walk_whatever_the_order(
    steps: list[tuple[object, ...]], prefill: int, block: int, rng: random.Random
) -> None:
    window = BurstWindow()
    # Enough entries to start with that the window counts incrementally, and
    # sometimes enough to fill it, so that appends push the oldest out; 7 s apart,
    # arriving shuffled within blocks (1: in time order).
    times = [1_000_000.0 + 7.0 * (k + 1) for k in range(prefill)]
    for first in range(0, prefill, block):
        part = times[first : first + block]
        rng.shuffle(part)
        times[first : first + block] = part
    for k, prefilled in enumerate(times):
        if k % 3 == 0:
            assert window.counts(prefilled) == walked(window, prefilled)
        window.add(prefilled, f"p{k % 9}", k % 5 == 0)
    ts = times[-1] if times else 1_000_000.0
    for step in steps:
        if step[0] in ("add", "event"):
            _, gap, user, failed = step
            assert isinstance(gap, float) and isinstance(user, str) and isinstance(failed, bool)
            ts += gap
            if step[0] == "event":
                assert window.counts(ts) == walked(window, ts)
            window.add(ts, user, failed)
        elif step[0] == "count":
            newest = window.entries[-1][0] if window.entries else ts
            assert isinstance(step[1], float)
            now = newest + step[1]
            assert window.counts(now) == walked(window, now)
        else:
            newest = window.entries[-1][0] if window.entries else ts
            assert isinstance(step[1], float)
            before = len(window.entries)
            window.drop_before(newest + step[1] - BURST_WINDOW_S)
            assert 0 < len(window.entries) <= before or before == 0
        assert len(window.entries) <= BURST_MAX_ENTRIES
    newest = window.entries[-1][0] if window.entries else ts
    for offset in (0.0, 1.0, BURST_WINDOW_S / 2, BURST_WINDOW_S):
        assert window.counts(newest + offset) == walked(window, newest + offset)


@pytest.mark.parametrize("block", [1, 16, 200])
def test_a_busy_window_counts_as_the_walk_long_after_it_filled(block: int) -> None:
    """Many windows' worth of events, 7 s apart, arriving shuffled within blocks."""
    rng = random.Random(block)
    times = [1_000_000.0 + 7.0 * k for k in range(5 * BURST_MAX_ENTRIES)]
    for first in range(0, len(times), block):
        part = times[first : first + block]
        rng.shuffle(part)
        times[first : first + block] = part
    window = BurstWindow()
    for k, ts in enumerate(times):
        counted = window.counts(ts)
        if k % 7 == 0 or k > len(times) - 50:
            assert counted == walked(window, ts)
        window.add(ts, f"u{k % 300}", k % 20 == 0)
    newest = window.entries[-1][0]
    for offset in (-BURST_WINDOW_S, -600.0, 0.0, 600.0, BURST_WINDOW_S):
        assert window.counts(newest + offset) == walked(window, newest + offset)


def test_a_full_window_counts_distinct_users_and_failures() -> None:
    window = BurstWindow()
    for k in range(BURST_MAX_ENTRIES + 100):
        window.add(float(k), f"u{k % 40}", k % 10 == 0)
    newest = float(BURST_MAX_ENTRIES + 99)
    # The oldest 100 were pushed out; all 512 kept are inside the hour.
    assert window.counts(newest) == (40, 52) == walked(window, newest)
    # An hour later only the newest entry's second is left in the window.
    assert window.counts(newest + BURST_WINDOW_S - 0.5) == (1, 0)
    assert window.counts(newest + BURST_WINDOW_S) == (0, 0)
    # Asked about an earlier moment again, it counts what was there then.
    assert window.counts(newest) == (40, 52)


def test_an_entry_out_of_order_stops_the_count_where_the_walk_stops() -> None:
    window = BurstWindow()
    for k in range(TRACK_FROM + 10):
        window.add(10_000.0 + k, f"u{k}", False)
    # A late entry from before the window: the walk from the newest stops at it.
    window.add(10_000.0 - BURST_WINDOW_S, "late", True)
    now = 10_000.0 + TRACK_FROM + 9
    assert window.counts(now) == (0, 0) == walked(window, now)
    window.add(now + 1.0, "next", False)
    assert window.counts(now + 1.0) == (1, 0) == walked(window, now + 1.0)


def test_the_table_counts_per_address_and_network() -> None:
    table = BurstTable()
    for k in range(600):
        table.record(f"ip{k % 3}", "net", f"u{k % 50}", float(k), k % 4 == 0)
    counts = table.counts("ip0", "net", 599.0)
    assert (counts.network_users, counts.network_failures) == (50, 128)
    assert counts.ip_users == len({f"u{k % 50}" for k in range(0, 600, 3)})
    assert table.counts("other", "elsewhere", 599.0) == BurstCounts()
