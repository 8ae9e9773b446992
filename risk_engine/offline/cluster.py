"""The Dask client of an offline command: a given scheduler, or a cluster on this machine.

``--scheduler tcp://host:8786`` connects to a running cluster (``dask scheduler``
and ``dask worker``, installed with the project). Without it, a local cluster of
one single-threaded worker process per core is started for the command and
stopped after it, or, for small inputs, the command runs in this process.
Backtest, train, evaluate and calibrate all choose the same way (``plan_engine``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from risk_engine.errors import ConfigurationError
from risk_engine.offline.remote import LogPath
from risk_engine.offline.sources import total_bytes

# How long to wait for a given scheduler to answer.
CONNECT_TIMEOUT_S = 30
# Below this size the inputs are replayed in this process: starting a cluster (each
# worker loads the model and the GeoIP database) costs more than it saves.
PARALLEL_MIN_BYTES = 16 << 20
# User (and network) partitions per worker: enough to even out their sizes.
PARTITIONS_PER_WORKER = 2
# At most this much input per partition: a partition's replay holds its users'
# profiles and lines at once, so a larger log gets more partitions, not larger ones.
PARTITION_BYTES = 64 << 20
# Data a local worker keeps in memory between the steps (its pieces' scanned lines
# waiting for their replay, decisions waiting for the client) before it spills the
# least recently used to its local disk, in megabytes. Unset: Dask's own target (60%
# of the worker's share of this host's memory); a bound this low costs CPU in
# pickling and disk reads (README, "Performance and sizing").
WORKER_DATA_ENV = "RISK_ENGINE_WORKER_DATA_MB"


def local_cores() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def dask_client(scheduler: str | None, workers: int | None = None) -> Iterator[Any]:
    """A connected ``distributed.Client``, closed (and its local cluster stopped) after."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise ConfigurationError(f"no Dask scheduler answers at {scheduler}: {exc}") from exc
        try:
            yield client
        finally:
            client.close()
        return
    import dask
    from distributed.system import MEMORY_LIMIT

    count = workers or local_cores()
    # Dask's own limit (this host's memory shared by the workers) for pausing and
    # for stopping a runaway worker; the spill target is the data budget within it.
    limit = max(MEMORY_LIMIT // count, 1 << 30)
    budget = worker_data_bytes()
    target = dask.config.get("distributed.worker.memory.target")
    if budget is not None:
        target = min(float(target), budget / limit)
    with dask.config.set({"distributed.worker.memory.target": target}):
        cluster = LocalCluster(
            n_workers=count,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
            memory_limit=limit,
        )
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def worker_data_bytes() -> int | None:
    """The data budget of a local worker (``WORKER_DATA_ENV``, in MB); None: Dask's own."""
    text = os.environ.get(WORKER_DATA_ENV, "").strip()
    if not text:
        return None
    try:
        megabytes = int(text)
    except ValueError:
        megabytes = 0
    if megabytes < 1:
        raise ConfigurationError(f"{WORKER_DATA_ENV} must be a whole number of megabytes >= 1")
    return megabytes << 20


def worker_count(client: Any) -> int:
    """The workers the scheduler knows of now (at least one)."""
    return max(1, len(client.scheduler_info().get("workers", {})))


def partition_count(workers: int, input_bytes: int) -> int:
    """User (and network) partitions: a few per worker, more as the inputs grow.

    Always a multiple of the workers: each partition's replay is one task, so with
    one partition more than a multiple, one worker would replay it while the others
    wait.
    """
    wanted = max(workers * PARTITIONS_PER_WORKER, -(-input_bytes // PARTITION_BYTES))
    return -(-wanted // workers) * workers


def plan_engine(files: Sequence[LogPath], scheduler: str | None, workers: int | None) -> int:
    """0 for this process, else the local workers to start (any, with a scheduler)."""
    if scheduler is not None:
        return 1
    if workers is not None:
        return 0 if workers <= 1 else workers
    if total_bytes(files) < PARALLEL_MIN_BYTES:
        return 0
    return local_cores()


@dataclass
class Where:
    """Where an offline command runs: this process (no client) or a Dask cluster."""

    client: Any | None
    engine: str
    dashboard: str | None
    partitions: int


@contextmanager
def offline_engine(
    files: Sequence[LogPath], scheduler: str | None, workers: int | None
) -> Iterator[Where]:
    """This process for small inputs (``plan_engine``), else a connected cluster.

    The cluster's dashboard address goes to stderr as soon as it is known: the place
    to watch a long run's tasks and each worker's memory.
    """
    local_workers = plan_engine(files, scheduler, workers)
    if scheduler is None and not local_workers:
        yield Where(None, "one process", None, 1)
        return
    with dask_client(scheduler, local_workers) as client:
        dashboard = client.dashboard_link
        print(f"Dask dashboard: {dashboard}", file=sys.stderr)
        yield Where(
            client,
            scheduler or f"local cluster, {local_workers} workers",
            dashboard,
            partition_count(worker_count(client), total_bytes(files)),
        )
