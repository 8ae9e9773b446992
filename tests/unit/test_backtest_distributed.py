"""The backtest on Dask decides exactly what it decides in one process."""

from __future__ import annotations

import gzip
import itertools
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from risk_engine.offline.backtest import BacktestSummary, run_backtest
from risk_engine.offline.cluster import PARTITION_BYTES, PARTITIONS_PER_WORKER, partition_count
from risk_engine.offline.distributed import PackedLines, Rows, key_text, network_part, run_bursts
from risk_engine.offline.logs import LogReport, read_piece
from risk_engine.offline.replayer import DealtBurstStore
from risk_engine.offline.sources import byte_ranges, plan_pieces
from risk_engine.profiles.bursts import BurstTable
from risk_engine.profiles.memory import MemoryStore
from risk_engine.profiles.model import BurstCounts
from risk_engine.profiles.store import BurstNote

ROOT = Path(__file__).parents[2]
SAMPLES = ROOT / "data" / "samples"
BIN = Path(sys.executable).parent


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


def test_a_local_cluster_decides_the_sample_as_one_process_does(tmp_path: Path) -> None:
    outcomes = SAMPLES / "outcomes.jsonl"
    one = run_backtest(
        SAMPLES / "events.jsonl", tmp_path / "one.jsonl", outcomes_path=outcomes, workers=1
    )
    two = run_backtest(
        SAMPLES / "events.jsonl", tmp_path / "two.jsonl", outcomes_path=outcomes, workers=2
    )
    assert one.outcomes_applied > 0
    assert one.engine == "one process"
    assert two.engine == "local cluster, 2 workers"
    assert two.dashboard
    assert summary_of(two) == summary_of(one)
    assert decisions(tmp_path / "two.jsonl") == decisions(tmp_path / "one.jsonl")


def messy_lines(seed: int) -> list[bytes]:
    """The sample with blank, bad and foreign lines, shuffled neighbours and shared instants."""
    rng = random.Random(seed)
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
            out.append(orjson.dumps({**record, "record": "result", "prev_hash": "0"}))  # skipped
        elif roll < 0.06 and previous is not None:
            record["timestamp"] = previous  # the same instant as the event before
        previous = record["timestamp"]
        out.append(orjson.dumps(record))
    for _ in range(300):
        i = rng.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


@pytest.mark.slow
def test_messy_logs_in_pieces_over_files_read_as_in_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bad lines, ties, disorder, several files (plain and gzip) and small pieces."""
    lines = messy_lines(5)
    half = len(lines) // 2
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_bytes(b"\n".join(lines[:half]) + b"\n")
    (tmp_path / "in" / "b.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines[half:]) + b"\n"))
    # Many pieces of the plain file: the line numbers of its problems still count from its start.
    monkeypatch.setattr("risk_engine.offline.sources.PIECE_BYTES", 50_000)
    one = run_backtest([tmp_path / "in"], tmp_path / "one.jsonl", workers=1)
    two = run_backtest([tmp_path / "in" / "*.jsonl*"], tmp_path / "two.jsonl", workers=2)
    assert one.bad > 0
    assert summary_of(two) == summary_of(one)
    assert decisions(tmp_path / "two.jsonl") == decisions(tmp_path / "one.jsonl")


def test_pieces_cover_a_file_at_line_starts_and_number_its_lines(tmp_path: Path) -> None:
    log = tmp_path / "lines.jsonl"
    log.write_bytes(b"".join(b"x" * (i % 7) + b"\n" for i in range(101)))
    data = log.read_bytes()
    for parts in (1, 2, 3, 8, 200):
        ranges = byte_ranges(log, parts)
        assert ranges[0][0] == 0
        assert ranges[-1][1] == len(data)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        assert all(start == 0 or data[start - 1 : start] == b"\n" for start, _ in ranges)
    pieces = plan_pieces([log], piece_bytes=40)
    assert len(pieces) > 5
    read = [
        raw
        for piece in pieces
        for _, raw, _ in read_piece(log, piece.start, piece.end, LogReport())
    ]
    assert b"".join(read) == data


def test_dealt_bursts_refuse_events_the_scan_did_not_derive() -> None:
    store = DealtBurstStore()
    counts = BurstCounts(3, 1, 7, 2, 6, 3)
    store.deal("ip1", "net1", 10.0, "user1", False, True, counts)
    seen = store.update_event(
        BurstNote("ip1", "net1", "user1", 10.0, False, "", True), lambda profile, bursts: bursts
    )
    assert seen == counts
    store.deal("ip1", "net1", 11.0, "user1", True, False, counts)
    with pytest.raises(RuntimeError, match="asked about the event"):
        store.update_event(BurstNote("ip2", "net1", "user1", 11.0, True), lambda p, b: None)
    # An event the scan took for a failure must not join a crowd in the replay.
    store.deal("ip1", "net1", 12.0, "user1", False, False, counts)
    with pytest.raises(RuntimeError, match="asked about the event"):
        store.update_event(
            BurstNote("ip1", "net1", "user1", 12.0, False, "", True), lambda p, b: None
        )
    store.deal("ip1", "net1", 13.0, "user1", False, False, counts)
    note = BurstNote("ip1", "net1", "user1", 13.0, False)
    store.update_event(note, lambda p, b: None)
    with pytest.raises(RuntimeError, match="asked about the event"):
        store.update_event(note, lambda p, b: None)
    with pytest.raises(RuntimeError, match="dealt"):
        store.burst_counts("ip1", "net1", 13.0)
    with pytest.raises(RuntimeError, match="dealt"):
        store.record_burst("ip1", "net1", "user1", 13.0, False)


@pytest.mark.parametrize("max_keys", [8, 200_000])
def test_trimmed_burst_windows_count_as_the_untrimmed_ones(max_keys: int) -> None:
    """In time order, trimming (at any moment) changes no count, even when pruning kicks in."""
    rng = random.Random(max_keys)
    plain, trimmed = BurstTable(max_keys=max_keys), BurstTable(max_keys=max_keys)
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


# -- a real cluster: `dask scheduler` and two `dask worker` processes (conftest.py) ------


@pytest.mark.slow
def test_a_two_worker_cluster_decides_as_one_process_does(
    tmp_path: Path, dask_cluster: str
) -> None:
    log = tmp_path / "messy.jsonl"
    log.write_bytes(b"\n".join(messy_lines(11)) + b"\n")
    outcomes = SAMPLES / "outcomes.jsonl"
    one = run_backtest(log, tmp_path / "one.jsonl", outcomes_path=outcomes, workers=1)
    cluster = run_backtest(
        log, tmp_path / "cluster.jsonl", outcomes_path=outcomes, scheduler=dask_cluster
    )
    assert cluster.engine == dask_cluster
    assert one.bad > 0 and one.outcomes_applied > 0
    assert summary_of(cluster) == summary_of(one)
    assert decisions(tmp_path / "cluster.jsonl") == decisions(tmp_path / "one.jsonl")


@settings(deadline=None, max_examples=100)
@given(st.lists(st.binary(max_size=300), max_size=60))
def test_packed_lines_give_back_every_line(lines: list[bytes]) -> None:
    packed = PackedLines.pack(lines)
    assert packed.unpack() == lines


def test_packed_lines_take_less_than_the_lines_of_a_log() -> None:
    lines = (SAMPLES / "events.jsonl").read_bytes().splitlines()[:2000]
    packed = PackedLines.pack(lines)
    assert len(packed.data) < 0.35 * sum(map(len, lines))


def test_a_larger_log_gets_more_partitions_not_larger_ones() -> None:
    assert partition_count(2, 1 << 20) == 2 * PARTITIONS_PER_WORKER
    assert partition_count(2, 10 * PARTITION_BYTES) == 10
    assert partition_count(2, 10 * PARTITION_BYTES + 1) == 12
    sizes = [partition_count(4, n * PARTITION_BYTES // 3) for n in range(1, 400, 7)]
    assert sizes == sorted(sizes)
    assert all(
        n * PARTITION_BYTES // 3 <= p * PARTITION_BYTES
        for n, p in zip(range(1, 400, 7), sizes, strict=True)
    )


def test_every_worker_gets_as_many_partitions() -> None:
    # The replay is one task per partition: with 7 on 2 workers, one worker replays
    # the last partition alone while the other waits.
    for workers in (1, 2, 3, 8):
        for n in range(0, 40 * PARTITION_BYTES, PARTITION_BYTES // 3):
            assert partition_count(workers, n) % workers == 0


@pytest.mark.parametrize("network_parts", [1, 3])
def test_crowds_run_per_network_partition_count_as_one_store_does(network_parts: int) -> None:
    """The crowd and burst counts dealt to each event, whatever the network partitioning."""
    rng = random.Random(network_parts)
    n = 4_000
    stamps = np.cumsum(rng.choices([0.0, 60.0, 3600.0, 6 * 3600.0], k=n)) + 1_700_000_000.0
    users = np.asarray([rng.randrange(60) + 1 for _ in range(n)], dtype=np.uint64)
    ips = np.asarray([rng.randrange(30) + 1 for _ in range(n)], dtype=np.uint64)
    networks = np.asarray([f"net{int(ip) % 6}" for ip in ips], dtype=object)
    failed = np.asarray([rng.random() < 0.2 for _ in range(n)], dtype=np.bool_)
    rows = Rows(np.arange(n, dtype=np.int64), stamps, users, ips, networks, failed, ~failed, None)
    store = MemoryStore()
    expected = []
    for i in range(n):
        note = BurstNote(
            key_text(int(ips[i])),
            str(networks[i]),
            key_text(int(users[i])),
            float(stamps[i]),
            bool(failed[i]),
            "",
            not bool(failed[i]),
        )
        expected.append(store.update_event(note, lambda profile, bursts: bursts))
    assert any(counts.crowd_users >= 5 for counts in expected)
    part_of = np.asarray([network_part(str(net), network_parts) for net in networks])
    got: dict[int, BurstCounts] = {}
    for part in range(network_parts):
        index = np.flatnonzero(part_of == part)
        for seq, counts in run_bursts(1, rows.take(index, lines=False)):
            got.update({int(s): BurstCounts(*c) for s, c in zip(seq, counts.tolist(), strict=True)})
    assert [got[i] for i in range(n)] == expected


def test_what_the_cluster_holds_says_its_size() -> None:
    """Dask decides when a worker spills by the sizes of what it holds (``dask.sizeof``)."""
    from dask.sizeof import sizeof

    from risk_engine.offline.distributed import Decided, Slice

    lines = (SAMPLES / "events.jsonl").read_bytes().splitlines()[:3000]
    packed = PackedLines.pack(lines)
    assert len(packed.data) <= sizeof(packed) < len(packed.data) + packed.ends.nbytes + 1024
    n = len(lines)
    rows = Rows(
        np.arange(n, dtype=np.int64),
        np.zeros(n),
        np.zeros(n, dtype=np.uint64),
        np.zeros(n, dtype=np.uint64),
        np.asarray(["81.2.69.0/24"] * n, dtype=object),
        np.zeros(n, dtype=np.bool_),
        np.ones(n, dtype=np.bool_),
        np.asarray(lines, dtype=object),
    )
    held = sum(map(len, lines)) + 4 * 8 * n
    assert held < sizeof(rows) < 3 * held
    rows.lines = packed
    assert sizeof(rows) < held
    part = Slice(np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), b"x" * n)
    assert sizeof(part) >= 3 * 8 * n + n
    assert sizeof(Decided(slices=[part, part])) >= 2 * sizeof(part)


def test_the_data_budget_of_local_workers_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from risk_engine.errors import ConfigurationError
    from risk_engine.offline.cluster import WORKER_DATA_ENV, worker_data_bytes

    monkeypatch.delenv(WORKER_DATA_ENV, raising=False)
    assert worker_data_bytes() is None
    monkeypatch.setenv(WORKER_DATA_ENV, "64")
    assert worker_data_bytes() == 64 << 20
    for bad in ("0", "-5", "lots", "1.5"):
        monkeypatch.setenv(WORKER_DATA_ENV, bad)
        with pytest.raises(ConfigurationError, match=WORKER_DATA_ENV):
            worker_data_bytes()


def test_local_workers_spill_what_waits_beyond_their_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The local cluster's workers keep at most the budget of data in memory."""
    from risk_engine.offline.cluster import WORKER_DATA_ENV, dask_client

    monkeypatch.setenv(WORKER_DATA_ENV, "32")

    def settings(dask_worker: Any) -> tuple[float, int]:
        import dask

        target = dask.config.get("distributed.worker.memory.target")
        return float(target), int(dask_worker.memory_manager.memory_limit)

    with dask_client(None, 2) as client:
        found = client.run(settings)
        assert len(found) == 2
        for target, limit in found.values():
            assert target * limit == pytest.approx(32 << 20, rel=1e-6)
        # Past the budget, results go to the worker's disk and come back intact.
        futures = [client.submit(np.full, 2_000_000, k, pure=False) for k in range(8)]
        client.gather(futures)
        spilled = client.run(lambda dask_worker: len(dask_worker.data.slow))
        assert sum(spilled.values()) > 0
        assert [int(f.result()[0]) for f in futures] == list(range(8))
