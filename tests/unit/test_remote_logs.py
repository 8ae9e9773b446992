"""Event logs named by URL are read through fsspec as local ones are read.

fsspec's in-memory file system stands in for an object store where one process is
enough (listing, globs, compression, Parquet); a real HTTP server (uvicorn,
``file_server`` in conftest.py) serves the logs the backtest reads end to end, in
one process, through the command line, and on a real Dask cluster whose workers
read their own pieces of the URL.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import fsspec
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from risk_engine.errors import ConfigurationError
from risk_engine.offline.backtest import BacktestSummary, run_backtest
from risk_engine.offline.logs import (
    LogReport,
    events_in_time_order,
    expand_paths,
    read_events,
    read_piece,
)
from risk_engine.offline.remote import LogPath, RemoteFile, is_url, log_path
from risk_engine.offline.sources import byte_ranges, plan_pieces
from tests.unit.test_backtest_distributed import decisions

ROOT = Path(__file__).parents[2]
SAMPLES = ROOT / "data" / "samples"
BIN = Path(sys.executable).parent


@pytest.fixture
def memory_fs() -> Iterator[fsspec.AbstractFileSystem]:
    fs = fsspec.filesystem("memory")  # one store per process: start and end empty
    if fs.exists("/logs"):
        fs.rm("/logs", recursive=True)
    yield fs
    if fs.exists("/logs"):
        fs.rm("/logs", recursive=True)


def sample_bytes() -> bytes:
    return (SAMPLES / "events.jsonl").read_bytes()


def counts_of(summary: BacktestSummary) -> tuple[object, ...]:
    return (summary.events, summary.bad, dict(summary.decisions), summary.outcomes_applied)


def test_urls_are_told_from_paths() -> None:
    assert is_url("https://host/logs/events.jsonl")
    assert is_url("s3://bucket/events.jsonl.gz")
    assert not is_url("/var/logs/events.jsonl")
    assert not is_url("logs/2026-*.jsonl")
    assert log_path("memory://logs/a.jsonl") == RemoteFile("memory://logs/a.jsonl")
    assert log_path("logs/a.jsonl") == Path("logs/a.jsonl")


def test_a_url_names_a_file_a_directory_or_a_glob(memory_fs: fsspec.AbstractFileSystem) -> None:
    memory_fs.pipe("/logs/b/2026-02.jsonl", b"{}\n")
    memory_fs.pipe("/logs/a/2026-01.jsonl.gz", gzip.compress(b"{}\n"))
    memory_fs.pipe("/logs/a/notes.txt", b"not a log")
    memory_fs.pipe("/logs/a/deeper/2026-03.parquet", b"")
    one = expand_paths(["memory://logs/b/2026-02.jsonl"])
    assert one == [RemoteFile("memory://logs/b/2026-02.jsonl")]
    directory = [str(p) for p in expand_paths(["memory://logs/a"])]
    assert directory == [
        "memory:///logs/a/2026-01.jsonl.gz",
        "memory:///logs/a/deeper/2026-03.parquet",
    ]
    globbed = [str(p) for p in expand_paths(["memory://logs/*/2026-0[12]*"])]
    assert globbed == ["memory:///logs/a/2026-01.jsonl.gz", "memory:///logs/b/2026-02.jsonl"]
    # Local paths and URLs mix, in the order given.
    mixed = expand_paths([SAMPLES / "events.jsonl", "memory://logs/b/2026-02.jsonl"])
    assert mixed == [SAMPLES / "events.jsonl", RemoteFile("memory://logs/b/2026-02.jsonl")]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("memory://logs/missing.jsonl", "event log not found: memory://logs/missing.jsonl"),
        ("memory://logs/empty", "holds no event logs"),
        ("memory://logs/*.parquet", "no event logs match"),
        ("nosuchscheme://host/events.jsonl", "Protocol not known: nosuchscheme"),
    ],
)
def test_a_url_that_names_no_log_is_a_clear_error(
    memory_fs: fsspec.AbstractFileSystem, url: str, says: str
) -> None:
    memory_fs.pipe("/logs/empty/notes.txt", b"not a log")
    with pytest.raises(ConfigurationError, match=says.replace("*", r"\*")):
        expand_paths([url])


def _events(path: LogPath) -> list[str]:
    report = LogReport()
    events = [e.model_dump_json() for e in read_events(path, report)]
    assert report.bad == 0
    return events


def test_remote_logs_read_as_local_ones_plain_gzip_and_parquet(
    memory_fs: fsspec.AbstractFileSystem, tmp_path: Path
) -> None:
    data = sample_bytes()
    local = _events(SAMPLES / "events.jsonl")
    memory_fs.pipe("/logs/events.jsonl", data)
    memory_fs.pipe("/logs/events.jsonl.gz", gzip.compress(data))
    records = [orjson.loads(line) for line in data.splitlines()]
    parquet = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist(records), parquet)
    memory_fs.pipe("/logs/events.parquet", parquet.read_bytes())
    for name in ("events.jsonl", "events.jsonl.gz"):
        assert _events(RemoteFile(f"memory://logs/{name}")) == local
    assert _events(RemoteFile("memory://logs/events.parquet")) == _events(parquet)


def test_a_remote_log_out_of_order_is_put_in_time_order(
    memory_fs: fsspec.AbstractFileSystem, tmp_path: Path
) -> None:
    lines = sample_bytes().splitlines()
    shuffled = b"\n".join(lines[1::2] + lines[0::2]) + b"\n"
    local = tmp_path / "shuffled.jsonl"
    local.write_bytes(shuffled)
    memory_fs.pipe("/logs/shuffled.jsonl", shuffled)
    report = LogReport()
    remote = [
        e.event_id for e in events_in_time_order(RemoteFile("memory://logs/shuffled.jsonl"), report)
    ]
    assert remote == [e.event_id for e in events_in_time_order(local, LogReport())]
    assert report.events == len(lines)


def test_pieces_of_a_url_are_the_pieces_of_the_file(file_server: tuple[str, Path]) -> None:
    """Byte ranges at line starts, read with HTTP range requests, as a worker reads them."""
    base, served = file_server
    (served / "events.jsonl").write_bytes(sample_bytes())
    remote = RemoteFile(f"{base}/events.jsonl")
    local = SAMPLES / "events.jsonl"
    assert byte_ranges(remote, 5) == byte_ranges(local, 5)
    for start, end in byte_ranges(local, 5):
        got = [raw for _, raw, _ in read_piece(remote, start, end, LogReport())]
        assert got == [raw for _, raw, _ in read_piece(local, start, end, LogReport())]
    pieces = plan_pieces([remote], piece_bytes=400_000)
    assert len(pieces) > 1 and {p.path for p in pieces} == {remote.url}


def test_a_backtest_of_a_url_decides_as_of_the_file(
    file_server: tuple[str, Path], tmp_path: Path
) -> None:
    base, served = file_server
    (served / "events.jsonl.gz").write_bytes(gzip.compress(sample_bytes()))
    outcomes = SAMPLES / "outcomes.jsonl"
    local = run_backtest(
        SAMPLES / "events.jsonl", tmp_path / "local.jsonl", outcomes_path=outcomes, workers=1
    )
    remote = run_backtest(
        f"{base}/events.jsonl.gz", tmp_path / "remote.jsonl", outcomes_path=outcomes, workers=1
    )
    assert counts_of(remote) == counts_of(local)
    assert decisions(tmp_path / "remote.jsonl") == decisions(tmp_path / "local.jsonl")
    # The command line takes the URL as it is (a Path would fold its "//").
    done = subprocess.run(
        [
            str(BIN / "risk-engine"),
            "backtest",
            f"{base}/events.jsonl.gz",
            "--out",
            str(tmp_path / "cli.jsonl"),
            "--outcomes",
            str(outcomes),
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert decisions(tmp_path / "cli.jsonl") == decisions(tmp_path / "local.jsonl")
    missing = subprocess.run(
        [str(BIN / "risk-engine"), "backtest", f"{base}/nope.jsonl", "--out", "x.jsonl"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=240,
        cwd=tmp_path,
    )
    assert missing.returncode != 0
    assert f"event log not found: {base}/nope.jsonl" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.slow
def test_a_cluster_reads_a_url_in_pieces_and_decides_as_one_process(
    file_server: tuple[str, Path], tmp_path: Path, dask_cluster: str
) -> None:
    """Each worker fetches its own byte ranges of the URL (no copy through the client)."""
    base, served = file_server
    (served / "events.jsonl").write_bytes(sample_bytes())
    outcomes = SAMPLES / "outcomes.jsonl"
    one = run_backtest(
        SAMPLES / "events.jsonl", tmp_path / "one.jsonl", outcomes_path=outcomes, workers=1
    )
    cluster = run_backtest(
        f"{base}/events.jsonl",
        tmp_path / "cluster.jsonl",
        outcomes_path=outcomes,
        scheduler=dask_cluster,
    )
    assert cluster.engine == dask_cluster
    assert counts_of(cluster) == counts_of(one)
    assert decisions(tmp_path / "cluster.jsonl") == decisions(tmp_path / "one.jsonl")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "risk-engine"), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
        cwd=cwd,
    )


def test_evaluate_and_calibrate_read_a_url_as_the_file(
    file_server: tuple[str, Path], tmp_path: Path
) -> None:
    base, served = file_server
    (served / "events.jsonl").write_bytes(sample_bytes())
    labels, outcomes = str(SAMPLES / "labels.jsonl"), str(SAMPLES / "outcomes.jsonl")
    figures = {}
    for name, events in (("local", str(SAMPLES / "events.jsonl")), ("url", f"{base}/events.jsonl")):
        done = _cli(
            "evaluate", events, "--labels", labels, "--outcomes", outcomes,
            "--json", f"{name}.json", cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        report = orjson.loads((tmp_path / f"{name}.json").read_bytes())
        assert report["inputs"]["events"] == events
        report["inputs"].pop("events")
        figures[name] = report
        done = _cli("calibrate", events, "--out", f"{name}.toml", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert figures["url"] == figures["local"]
    local, remote = ((tmp_path / f"{n}.toml").read_text() for n in ("local", "url"))
    assert remote.replace(f"{base}/events.jsonl", "EVENTS") == local.replace(
        str(SAMPLES / "events.jsonl"), "EVENTS"
    )
