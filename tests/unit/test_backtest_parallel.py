"""The backtest on several processes decides exactly what it decides on one."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import orjson
import pytest

from risk_engine.backtest import BacktestSummary, run_backtest
from risk_engine.backtest_parallel import DealtBurstStore, TrimmedBurstTable, byte_ranges
from risk_engine.profiles.bursts import BurstTable
from risk_engine.profiles.model import BurstCounts
from risk_engine.profiles.store import BurstNote

ROOT = Path(__file__).parents[2]
SAMPLES = ROOT / "data" / "samples"


def decisions(path: Path) -> list[dict[str, object]]:
    """The decisions written, without the random decision ids."""
    out = []
    for line in path.read_bytes().splitlines():
        record = orjson.loads(line)
        record.pop("decision_id", None)
        out.append(record)
    return out


def summary_of(summary: BacktestSummary) -> tuple[object, ...]:
    return (
        summary.events,
        summary.bad,
        dict(summary.decisions),
        summary.outcomes_applied,
        [str(problem) for problem in summary.problems],
        summary.model_version,
    )


def test_two_processes_decide_the_sample_as_one_does(tmp_path: Path) -> None:
    outcomes = SAMPLES / "outcomes.jsonl"
    one = run_backtest(
        SAMPLES / "events.jsonl", tmp_path / "one.jsonl", outcomes_path=outcomes, workers=1
    )
    two = run_backtest(
        SAMPLES / "events.jsonl", tmp_path / "two.jsonl", outcomes_path=outcomes, workers=2
    )
    assert one.outcomes_applied > 0
    assert summary_of(two) == summary_of(one)
    assert decisions(tmp_path / "two.jsonl") == decisions(tmp_path / "one.jsonl")


def messy_log(path: Path) -> None:
    """The sample with blank, bad and foreign lines, shuffled neighbours and shared instants."""
    rng = random.Random(5)
    out: list[bytes] = []
    previous = None
    for line in (SAMPLES / "events.jsonl").read_bytes().splitlines():
        record = orjson.loads(line)
        roll = rng.random()
        if roll < 0.01:
            out.append(b"")
        elif roll < 0.02:
            out.append(b"{not json")
        elif roll < 0.03:
            out.append(orjson.dumps({**record, "amount": -5}))  # bad, with a valid timestamp
        elif roll < 0.04:
            out.append(orjson.dumps({**record, "record": "result"}))  # another kind: skipped
        elif roll < 0.06 and previous is not None:
            record["timestamp"] = previous  # the same instant as the event before
        previous = record["timestamp"]
        out.append(orjson.dumps(record))
    for _ in range(300):
        i = rng.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    path.write_bytes(b"\n".join(out) + b"\n")


@pytest.mark.slow
def test_three_processes_read_a_messy_log_as_one_does(tmp_path: Path) -> None:
    log = tmp_path / "messy.jsonl"
    messy_log(log)
    one = run_backtest(log, tmp_path / "one.jsonl", workers=1)
    three = run_backtest(log, tmp_path / "three.jsonl", workers=3)
    assert one.bad > 0
    assert summary_of(three) == summary_of(one)
    assert decisions(tmp_path / "three.jsonl") == decisions(tmp_path / "one.jsonl")


def test_byte_ranges_cover_the_file_at_line_starts(tmp_path: Path) -> None:
    log = tmp_path / "lines.jsonl"
    log.write_bytes(b"".join(b"x" * (i % 7) + b"\n" for i in range(101)))
    data = log.read_bytes()
    for parts in (1, 2, 3, 8, 200):
        ranges = byte_ranges(log, parts)
        assert ranges[0][0] == 0
        assert ranges[-1][1] == len(data)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        assert all(start == 0 or data[start - 1 : start] == b"\n" for start, _ in ranges)


def test_dealt_bursts_refuse_events_the_scan_did_not_derive() -> None:
    store = DealtBurstStore()
    counts = BurstCounts(3, 1, 7, 2)
    store.deal("ip1", "net1", 10.0, "user1", False, counts)
    seen = store.update_event(
        BurstNote("ip1", "net1", "user1", 10.0, False), lambda profile, bursts: bursts
    )
    assert seen == counts
    store.deal("ip1", "net1", 11.0, "user1", True, counts)
    with pytest.raises(RuntimeError, match="asked about the event"):
        store.update_event(BurstNote("ip2", "net1", "user1", 11.0, True), lambda p, b: None)
    store.deal("ip1", "net1", 12.0, "user1", True, counts)
    with pytest.raises(RuntimeError, match="asked about the event"):
        store.update_event(BurstNote("ip1", "net1", "user1", 12.0, False), lambda p, b: None)
    # The one dealt note is spent once asked about: a second event must be dealt anew.
    store.deal("ip1", "net1", 13.0, "user1", False, counts)
    note = BurstNote("ip1", "net1", "user1", 13.0, False)
    store.update_event(note, lambda p, b: None)
    with pytest.raises(RuntimeError, match="asked about the event"):
        store.update_event(note, lambda p, b: None)
    # Bursts come dealt or not at all: the store's own windows are never consulted.
    with pytest.raises(RuntimeError, match="dealt"):
        store.burst_counts("ip1", "net1", 13.0)
    with pytest.raises(RuntimeError, match="dealt"):
        store.record_burst("ip1", "net1", "user1", 13.0, False)


@pytest.mark.parametrize("max_keys", [8, 200_000])
def test_trimmed_burst_windows_count_as_the_untrimmed_ones(max_keys: int) -> None:
    """In time order, trimming (at any moment) changes no count, even when pruning kicks in."""
    rng = random.Random(max_keys)
    plain, trimmed = BurstTable(max_keys=max_keys), TrimmedBurstTable(max_keys=max_keys)
    now = 0.0
    for step in range(20_000):
        now += rng.choice([0.0, 1.0, 30.0, 600.0, 3600.0])
        ip, net = f"ip{rng.randrange(12)}", f"net{rng.randrange(5)}"
        user, failed = f"u{rng.randrange(40)}", rng.random() < 0.2
        assert trimmed.counts(ip, net, now) == plain.counts(ip, net, now), step
        plain.record(ip, net, user, now, failed)
        trimmed.record(ip, net, user, now, failed)
        if rng.random() < 0.05:
            trimmed.trim(now)
