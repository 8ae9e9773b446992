"""The backtest on a Dask cluster, with exactly the decisions of one process.

An event's decision depends on its own user's earlier events, and on the burst
windows (distinct users and failed logins per address and per network in the
last hour) and the networks' crowds (which users succeeded there on earlier
days), which depend on the event stream alone, never on decisions. An address
belongs to one network, so the windows and crowds split by network. Four steps:

1. scan, per piece of the inputs: validate every line (bad ones are reported
   from here), and split the valid events by network and by user;
2. bursts, per network partition: order its events (timestamp, then input
   order) and run the burst windows and crowds over them, with the memory
   store's tables;
3. decide, per user partition: order its events the same way and replay them
   through the backtest's own loop body, each with its dealt burst counts; the
   store checks that the engine asks about exactly the keys the scan derived, so
   a change in how the engine keys its bursts fails loudly instead of deciding
   differently;
4. write, on the client: the decisions in the global order, one time slice of
   all user partitions at a time, so the client holds a slice, never the log.

Training runs steps 1 and 2 alike, then replays each user partition through the
training replay (``Engine.replay``, score-then-learn) instead of deciding, and
sends the client the partition's bounded sample of feature rows
(``risk_engine.offline.sample``), never the rows themselves.

The tasks are module functions: a worker needs the project installed, and the
inputs and the model file readable at the same paths.
"""

from __future__ import annotations

import io
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from risk_engine.assembly import build_engine, load_scorer
from risk_engine.engine import Scorer
from risk_engine.events import Event, parse_event_line
from risk_engine.geo import GeoLocator
from risk_engine.offline.labels import Label
from risk_engine.offline.logs import MAX_KEPT_PROBLEMS, BadLine, LineSink, LogReport, read_piece
from risk_engine.offline.remote import log_path
from risk_engine.offline.replayer import DealtBurstStore, EventClock, Replayer
from risk_engine.offline.sample import FeatureSample
from risk_engine.offline.sources import Piece
from risk_engine.profiles.bursts import BurstTable
from risk_engine.profiles.crowds import CrowdTable
from risk_engine.profiles.model import BurstCounts

# Counts dealt with each event: the four burst counts, then the crowd's users and days.
COUNTS = 6
# Events between two trims of a partition's burst windows.
TRIM_EVERY = 65536
# Decisions per slice the client writes at a time (about: slices cut time evenly).
SLICE_EVENTS = 200_000
# Deflate level of the lines and decisions the cluster keeps between steps: level 1
# takes most of what level 6 would, at a fraction of the time.
LINES_LEVEL = 1

GeoPaths = tuple[str, str | None, str | None]
# A small object's own size, beside what it holds.
_OBJECT = 64


def _object_array_size(values: NDArray[np.object_]) -> int:
    """An array of strings or bytes with what it points to (the first few, as a sample)."""
    if not values.size:
        return values.nbytes
    sample = values[:64].tolist()
    return values.nbytes + values.size * sum(map(sys.getsizeof, sample)) // len(sample)


@dataclass(frozen=True)
class Setup:
    """What a worker needs to build the engine of the one-process backtest."""

    model_path: str | None
    policy_path: str | None
    geo_paths: GeoPaths | None
    network_parts: int
    user_parts: int
    # Ref -> data key: what opens sealed audit records (``LogReport.keys``).
    keys: tuple[tuple[str, str], ...] = ()


@dataclass
class PackedLines:
    """A partition's lines, deflated together: what the cluster holds until the replay.

    Lines wait in the workers' memory from the scan until their user partition is
    replayed; deflated, they take a fraction of their size (JSON repeats itself).
    """

    data: bytes
    ends: NDArray[np.int64]

    @classmethod
    def pack(cls, lines: list[bytes]) -> PackedLines:
        ends = np.cumsum(np.fromiter(map(len, lines), dtype=np.int64, count=len(lines)))
        return cls(zlib.compress(b"".join(lines), LINES_LEVEL), ends)

    def unpack(self) -> list[bytes]:
        raw = zlib.decompress(self.data)
        ends = self.ends.tolist()
        return [raw[a:b] for a, b in zip([0, *ends], ends, strict=False)]

    def __sizeof__(self) -> int:
        # What Dask counts of a task's result (``dask.sizeof`` falls back to this):
        # it decides when a worker spills to disk.
        return _OBJECT + len(self.data) + self.ends.nbytes


@dataclass
class Rows:
    """Scanned events: input order key, time, the burst keys, and (for deciding) the line."""

    seq: NDArray[np.int64]
    stamps: NDArray[np.float64]
    users: NDArray[np.uint64]
    ips: NDArray[np.uint64]
    networks: NDArray[np.object_]
    failed: NDArray[np.bool_]
    succeeded: NDArray[np.bool_]
    lines: NDArray[np.object_] | PackedLines | None = None

    def take(self, index: NDArray[Any], lines: bool) -> Rows:
        if isinstance(self.lines, PackedLines):
            raise TypeError("packed lines are unpacked (_joined) before rows are taken")
        return Rows(
            self.seq[index],
            self.stamps[index],
            self.users[index],
            self.ips[index],
            self.networks[index],
            self.failed[index],
            self.succeeded[index],
            self.lines[index] if lines and self.lines is not None else None,
        )

    def __sizeof__(self) -> int:
        arrays = (self.seq, self.stamps, self.users, self.ips, self.failed, self.succeeded)
        size = _OBJECT + sum(a.nbytes for a in arrays) + _object_array_size(self.networks)
        if isinstance(self.lines, PackedLines):
            size += sys.getsizeof(self.lines)
        elif self.lines is not None:
            size += _object_array_size(self.lines)
        return size


@dataclass
class Scanned:
    """What the scan of one piece found."""

    physical_lines: int
    report: LogReport
    count: int
    first: float
    last: float
    by_network: list[Rows]
    by_user: list[Rows]

    def __sizeof__(self) -> int:
        return _OBJECT + sum(sys.getsizeof(rows) for rows in (*self.by_network, *self.by_user))


@dataclass
class Slice:
    """Decisions of one user partition in one time slice, in the global order.

    ``data`` is the decision lines deflated: they wait in the workers' memory until
    the client writes their slice, after every partition has decided.
    """

    stamps: NDArray[np.float64]
    seq: NDArray[np.int64]
    ends: NDArray[np.int64]
    data: bytes

    def __sizeof__(self) -> int:
        return _OBJECT + self.stamps.nbytes + self.seq.nbytes + self.ends.nbytes + len(self.data)


@dataclass
class Decided:
    """What one user partition decided."""

    events: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    outcomes_applied: int = 0
    slices: list[Slice] = field(default_factory=list)

    def __sizeof__(self) -> int:
        return _OBJECT + sum(sys.getsizeof(part) for part in self.slices)


def key_text(value: int) -> str:
    """The 16 hex digits of a ``Hasher`` digest, back from the integer the scan kept."""
    return f"{value:016x}"


def network_part(network: str, parts: int) -> int:
    """The network partition of a network: a hash stable across processes and runs."""
    return zlib.crc32(network.encode()) % parts


@lru_cache(maxsize=4)
def _geo(paths: GeoPaths | None) -> GeoLocator:
    if paths is None:
        return GeoLocator()
    city, asn, anonymous = paths
    return GeoLocator(
        Path(city),
        asn_db=Path(asn) if asn else None,
        anonymous_db=Path(anonymous) if anonymous else None,
    )


@lru_cache(maxsize=4)
def _scorer(model_path: str | None, policy_path: str | None) -> Scorer:
    return load_scorer(
        Path(model_path) if model_path else None, Path(policy_path) if policy_path else None
    )


# -- the tasks ----------------------------------------------------------------------------


def scan_piece(piece: Piece, setup: Setup) -> Scanned:
    """Validate every line of a piece; split its events by network and by user."""
    engine = build_engine(geo=_geo(setup.geo_paths))
    report = LogReport(keys=dict(setup.keys) if setup.keys else None)
    seq: list[int] = []
    stamps: list[float] = []
    users: list[int] = []
    ips: list[int] = []
    networks: list[str] = []
    failed: list[bool] = []
    succeeded: list[bool] = []
    lines: list[bytes] = []
    number = 0
    base = piece.index << 32
    for number, raw, event in read_piece(log_path(piece.path), piece.start, piece.end, report):
        if event is None:
            continue
        seq.append(base | number)
        stamps.append(event.epoch)
        # The keys ``Engine.decide`` queries and notes bursts under (checked there).
        users.append(int(engine.user_key(event.user_id), 16))
        ips.append(int(engine.hasher.digest("ip", str(event.ip)), 16))
        networks.append(engine.network_of(event))
        failed.append(event.action == "login" and not event.success)
        succeeded.append(event.success)
        if b'"sealed"' in raw and b'"prev_hash"' in raw:
            # An opened audit record: the partition re-reads the event, not the sealed line.
            raw = event.model_dump_json().encode()
        lines.append(raw)
    rows = Rows(
        np.asarray(seq, dtype=np.int64),
        np.asarray(stamps, dtype=np.float64),
        np.asarray(users, dtype=np.uint64),
        np.asarray(ips, dtype=np.uint64),
        np.asarray(networks, dtype=object),
        np.asarray(failed, dtype=np.bool_),
        np.asarray(succeeded, dtype=np.bool_),
        np.asarray(lines, dtype=object),
    )
    del seq, stamps, users, ips, networks, failed, succeeded, lines
    net_of = np.asarray(
        [network_part(n, setup.network_parts) for n in rows.networks.tolist()], dtype=np.int64
    )
    user_of = (rows.users % np.uint64(setup.user_parts)).astype(np.int64)
    return Scanned(
        physical_lines=number,
        report=report,
        count=int(rows.seq.size),
        first=float(rows.stamps.min()) if rows.seq.size else 0.0,
        last=float(rows.stamps.max()) if rows.seq.size else 0.0,
        by_network=[
            rows.take(np.flatnonzero(net_of == k), lines=False) for k in range(setup.network_parts)
        ],
        by_user=[
            _packed(rows.take(np.flatnonzero(user_of == k), lines=True))
            for k in range(setup.user_parts)
        ],
    )


def _packed(rows: Rows) -> Rows:
    """``rows`` with their lines deflated (``PackedLines``)."""
    assert isinstance(rows.lines, np.ndarray)
    rows.lines = PackedLines.pack(rows.lines.tolist())
    return rows


def network_rows(scanned: Scanned, part: int) -> Rows:
    return scanned.by_network[part]


def user_rows(scanned: Scanned, part: int) -> Rows:
    return scanned.by_user[part]


def _joined(parts: Sequence[Rows]) -> Rows:
    lines = [
        np.asarray(p.lines.unpack(), dtype=object) if isinstance(p.lines, PackedLines) else p.lines
        for p in parts
        if p.lines is not None
    ]
    return Rows(
        np.concatenate([p.seq for p in parts]),
        np.concatenate([p.stamps for p in parts]),
        np.concatenate([p.users for p in parts]),
        np.concatenate([p.ips for p in parts]),
        np.concatenate([p.networks for p in parts]),
        np.concatenate([p.failed for p in parts]),
        np.concatenate([p.succeeded for p in parts]),
        np.concatenate(lines) if len(lines) == len(parts) else None,
    )


def run_bursts(user_parts: int, *parts: Rows) -> list[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """The burst and crowd counts of one network partition's events, by user partition.

    (seq, counts) per user partition. A network's crowd, like its windows, depends
    on that network's events alone, so the network partition runs both.
    """
    rows = _joined(parts)
    order = np.lexsort((rows.seq, rows.stamps))  # time, then input order
    # Fed in time order and trimmed as time passes (BurstTable.trim).
    table = BurstTable()
    crowds = CrowdTable()
    counts = np.zeros((order.size, COUNTS), dtype=np.int64)
    stamps = rows.stamps[order].tolist()
    ips = rows.ips[order].tolist()
    networks = rows.networks[order].tolist()
    users = rows.users[order].tolist()
    failed = rows.failed[order].tolist()
    succeeded = rows.succeeded[order].tolist()
    user_text: dict[int, str] = {}
    values: list[tuple[int, ...]] = []
    for i, now in enumerate(stamps):
        ip_key, network = key_text(ips[i]), networks[i]
        text = user_text.get(users[i])
        if text is None:
            text = user_text[users[i]] = key_text(users[i])
        c = table.counts(ip_key, network, now, crowds.counts(network, text, now))
        values.append(
            (
                c.ip_users,
                c.ip_failures,
                c.network_users,
                c.network_failures,
                c.crowd_users,
                c.crowd_days,
            )
        )
        table.record(ip_key, network, text, now, failed[i])
        if succeeded[i]:
            crowds.note(network, text, now)
        if (i + 1) % TRIM_EVERY == 0:
            table.trim(now)
    if values:
        counts[:] = values
    seq = rows.seq[order]
    owner = (rows.users[order] % np.uint64(user_parts)).astype(np.int64)
    return [(seq[owner == k], counts[owner == k]) for k in range(user_parts)]


def burst_share(result: list[tuple[NDArray[np.int64], NDArray[np.int64]]], part: int) -> Any:
    return result[part]


def _in_order(parts: int, inputs: Sequence[Any]) -> tuple[Rows, NDArray[np.int64], list[list[int]]]:
    """A user partition's rows in the global order, with their sequence and burst counts.

    ``inputs``: ``parts`` Rows (one per scanned piece), then one burst share per
    network partition.
    """
    rows = _joined(inputs[:parts])
    shares: Sequence[tuple[NDArray[np.int64], NDArray[np.int64]]] = inputs[parts:]
    burst_seq = np.concatenate([s[0] for s in shares])
    burst_counts = np.concatenate([s[1] for s in shares]).reshape(-1, COUNTS)
    by_seq = np.argsort(burst_seq, kind="stable")
    burst_seq, burst_counts = burst_seq[by_seq], burst_counts[by_seq]
    order = np.lexsort((rows.seq, rows.stamps))
    seq = rows.seq[order]
    where = np.searchsorted(burst_seq, seq)
    if seq.size and (burst_seq.size != seq.size or not bool(np.array_equal(burst_seq[where], seq))):
        raise RuntimeError("distributed backtest: burst counts missing for some events")
    return rows.take(order, lines=True), seq, burst_counts[where].tolist()


def _dealt(rows: Rows, counts: list[list[int]], store: DealtBurstStore) -> Iterator[Event]:
    """The partition's events in order, each with its burst counts dealt to ``store``."""
    assert isinstance(rows.lines, np.ndarray)
    stamps = rows.stamps.tolist()
    users = rows.users.tolist()
    ips = rows.ips.tolist()
    networks = rows.networks.tolist()
    failed = rows.failed.tolist()
    succeeded = rows.succeeded.tolist()
    for i, line in enumerate(rows.lines.tolist()):
        # Validated in the scan: parsing the same bytes again cannot fail.
        event = parse_event_line(line)
        store.deal(
            key_text(ips[i]),
            networks[i],
            stamps[i],
            key_text(users[i]),
            failed[i],
            succeeded[i],
            BurstCounts(*counts[i]),
        )
        yield event


def decide_users(
    setup: Setup,
    outcomes: dict[str, bool],
    edges: NDArray[np.float64],
    parts: int,
    *inputs: Any,
) -> Decided:
    """Replay one user partition in the global order: ``parts`` Rows, then burst shares."""
    rows, seq, counts = _in_order(parts, inputs)
    store = DealtBurstStore()
    clock = EventClock()
    engine = build_engine(
        store=store,
        geo=_geo(setup.geo_paths),
        scorer=_scorer(setup.model_path, setup.policy_path),
        clock=clock,
    )
    out = io.BytesIO()
    replayer = Replayer(engine, clock, outcomes, out)
    ends = np.empty(seq.size, dtype=np.int64)
    for i, event in enumerate(_dealt(rows, counts, store)):
        replayer.step(event)
        ends[i] = out.tell()
    data = out.getbuffer()
    stamps = rows.stamps
    bucket = np.searchsorted(edges, stamps, side="right")
    slices = []
    for k in range(edges.size + 1):
        index = np.flatnonzero(bucket == k)
        if not index.size:
            slices.append(Slice(stamps[:0], seq[:0], ends[:0], b""))
            continue
        first, last = int(index[0]), int(index[-1])
        begin = int(ends[first - 1]) if first else 0
        slices.append(
            Slice(
                stamps[first : last + 1],
                seq[first : last + 1],
                ends[first : last + 1] - begin,
                zlib.compress(data[begin : int(ends[last])], LINES_LEVEL),
            )
        )
    del data
    return Decided(int(seq.size), replayer.decisions, replayer.outcomes_applied, slices)


def sample_users(
    setup: Setup, labels: dict[str, Label], capacity: int, seed: int, parts: int, *inputs: Any
) -> FeatureSample:
    """Training's replay of one user partition in the global order, kept as a bounded sample."""
    rows, _, counts = _in_order(parts, inputs)
    store = DealtBurstStore()
    engine = build_engine(store=store, geo=_geo(setup.geo_paths))
    sample = FeatureSample(capacity, seed)
    for event in _dealt(rows, counts, store):
        label = labels.get(event.event_id)
        values, _ = engine.replay(event, trusted=not (label is not None and label.is_attack))
        sample.add(event, values, label)
    sample.users = int(np.unique(rows.users).size)
    return sample.finished()


def decided_slice(decided: Decided, k: int) -> Slice:
    return decided.slices[k]


def decided_counts(decided: Decided) -> Decided:
    return Decided(decided.events, decided.decisions, decided.outcomes_applied)


# -- the client ---------------------------------------------------------------------------


@dataclass
class DistributedResult:
    """What the distributed backtest read and decided, for the summary."""

    report: LogReport
    decisions: Counter[str]
    outcomes_applied: int


def make_setup(
    model_path: Path | None,
    policy_path: Path | None,
    geo: GeoLocator | None,
    partitions: int,
    keys: Mapping[str, str] | None = None,
) -> Setup:
    """What the workers need, as paths they open themselves."""
    return Setup(
        model_path=str(model_path) if model_path else None,
        policy_path=str(policy_path) if policy_path else None,
        geo_paths=(
            (
                str(geo.city_path),
                str(geo.asn_path) if geo.asn_path else None,
                str(geo.anonymous_path) if geo.anonymous_path else None,
            )
            if geo is not None
            else None
        ),
        network_parts=partitions,
        user_parts=partitions,
        keys=tuple(sorted(keys.items())) if keys else (),
    )


@dataclass
class Planned:
    """Steps 1 and 2 submitted: the scans' parts, their joint report, the burst counts.

    ``user_rows[q]`` holds user partition q's rows of every piece, each its own
    future, taken out of the scans as soon as they end: a worker short of memory
    spills (and reads back) each part alone, never a whole scan for one part.
    """

    pieces: int
    user_rows: list[list[Any]]
    report: LogReport
    total: int
    first: float
    last: float
    bursts: list[Any]


def scan_and_bursts(client: Any, pieces: list[Piece], setup: Setup) -> Planned:
    """Scan every piece (waiting for the counts and the report), then submit the bursts."""
    submit = client.submit
    scans = [submit(scan_piece, piece, setup, pure=False) for piece in pieces]
    summaries = client.gather([submit(_scan_summary, s, pure=False) for s in scans])
    report = _joined_report(pieces, summaries)
    total = sum(s[2] for s in summaries)
    if total == 0:
        return Planned(len(pieces), [], report, 0, 0.0, 0.0, [])
    bursts = [
        submit(
            run_bursts,
            setup.user_parts,
            *[submit(network_rows, s, k, pure=False) for s in scans],
            pure=False,
        )
        for k in range(setup.network_parts)
    ]
    user_parts = [
        [submit(user_rows, s, q, pure=False) for s in scans] for q in range(setup.user_parts)
    ]
    return Planned(
        len(pieces),
        user_parts,
        report,
        total,
        min(s[3] for s in summaries if s[2]),
        max(s[4] for s in summaries if s[2]),
        bursts,
    )


def _partition_inputs(client: Any, planned: Planned, part: int) -> list[Any]:
    """The inputs of a user partition's task: its rows of every scan, its burst shares."""
    submit = client.submit
    return [
        *planned.user_rows[part],
        *[submit(burst_share, b, part, pure=False) for b in planned.bursts],
    ]


def _broadcast(client: Any, mapping: Mapping[str, Any]) -> Any:
    # In a list: a scattered dict would become one future per entry.
    return client.scatter([mapping], broadcast=True)[0] if mapping else {}


def run_distributed(
    client: Any,
    pieces: list[Piece],
    out: LineSink,
    *,
    outcomes: dict[str, bool],
    model_path: Path | None,
    policy_path: Path | None,
    geo: GeoLocator | None,
    partitions: int,
    on_total: Callable[[int], None],
    on_tick: Callable[[int], None],
) -> DistributedResult:
    """Decide every valid event of ``pieces`` on the cluster of ``client``; write to ``out``."""
    from distributed import as_completed

    setup = make_setup(model_path, policy_path, geo, partitions)
    submit = client.submit
    planned = scan_and_bursts(client, pieces, setup)
    on_total(planned.total)
    if planned.total == 0:
        return DistributedResult(planned.report, Counter(), 0)
    slices = max(1, -(-planned.total // SLICE_EVENTS))
    edges = np.linspace(planned.first, planned.last, slices + 1)[1:-1]
    shared_outcomes = _broadcast(client, outcomes)
    decided = [
        submit(
            decide_users,
            setup,
            shared_outcomes,
            edges,
            planned.pieces,
            *_partition_inputs(client, planned, q),
            pure=False,
        )
        for q in range(partitions)
    ]
    report = planned.report
    del planned
    # Each slice its own future from the start, so a partition's decisions are let
    # go (or spilled) slice by slice as the client writes them.
    sliced = [[submit(decided_slice, d, k, pure=False) for k in range(slices)] for d in decided]
    counted = [submit(decided_counts, d, pure=False) for d in decided]
    del decided
    decisions: Counter[str] = Counter()
    applied = done = 0
    for future in as_completed(counted):
        result = future.result()
        decisions.update(result.decisions)
        applied += result.outcomes_applied
        done += result.events
        on_tick(done)
    for k in range(slices):
        parts: list[Slice] = client.gather([row[k] for row in sliced])
        for row in sliced:
            row[k] = None  # written: the cluster may forget it
        _write_slice(parts, out)
    return DistributedResult(report, decisions, applied)


def sample_distributed(
    client: Any,
    pieces: list[Piece],
    *,
    labels: dict[str, Label],
    geo: GeoLocator | None,
    keys: Mapping[str, str] | None,
    partitions: int,
    capacity: int,
    seed: int,
    on_total: Callable[[int], None],
    on_tick: Callable[[int], None],
) -> tuple[LogReport, FeatureSample]:
    """Training's replay of ``pieces`` on the cluster: the report and the merged sample.

    The client holds one partition's sample at a time besides the merged one: at
    most the capacity in legitimate rows (twice while merging) and the attacks.
    """
    from distributed import as_completed

    setup = make_setup(None, None, geo, partitions, keys)
    planned = scan_and_bursts(client, pieces, setup)
    on_total(planned.total)
    merged = FeatureSample(capacity, seed)
    if planned.total == 0:
        return planned.report, merged
    shared_labels = _broadcast(client, labels)
    sampled = [
        client.submit(
            sample_users,
            setup,
            shared_labels,
            capacity,
            seed,
            planned.pieces,
            *_partition_inputs(client, planned, q),
            pure=False,
        )
        for q in range(partitions)
    ]
    report = planned.report
    del planned
    for future in as_completed(sampled):
        part: FeatureSample = future.result()
        future.release()
        merged.merge(part)
        on_tick(merged.events)
    return report, merged


def _scan_summary(scanned: Scanned) -> tuple[int, LogReport, int, float, float]:
    return scanned.physical_lines, scanned.report, scanned.count, scanned.first, scanned.last


def _joined_report(
    pieces: list[Piece], summaries: list[tuple[int, LogReport, int, float, float]]
) -> LogReport:
    """One report of all pieces, with line numbers counted from each file's start."""
    report = LogReport()
    lines_before = 0
    previous_file = -1
    for piece, (physical, part, _, _, _) in zip(pieces, summaries, strict=True):
        if piece.file_index != previous_file:
            lines_before, previous_file = 0, piece.file_index
        report.lines += part.lines
        report.events += part.events
        report.bad += part.bad
        report.skipped += part.skipped
        report.problems.extend(
            BadLine(problem.source, problem.line + lines_before, problem.message, problem.field)
            for problem in part.problems
        )
        lines_before += physical
    del report.problems[MAX_KEPT_PROBLEMS:]
    return report


def _write_slice(parts: list[Slice], out: LineSink) -> None:
    """Interleave one time slice of every user partition into the global order."""
    if not any(p.seq.size for p in parts):
        return
    stamps = np.concatenate([p.stamps for p in parts])
    seq = np.concatenate([p.seq for p in parts])
    owner = np.concatenate([np.full(p.seq.size, k, dtype=np.int64) for k, p in enumerate(parts)])
    position = np.concatenate([np.arange(p.seq.size) for p in parts])
    views = [memoryview(zlib.decompress(p.data)) for p in parts]
    starts = [np.concatenate(([0], p.ends[:-1])) for p in parts]
    write = out.write
    for i in np.lexsort((seq, stamps)).tolist():
        k, j = int(owner[i]), int(position[i])
        write(views[k][int(starts[k][j]) : int(parts[k].ends[j])])
