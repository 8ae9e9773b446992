"""The Dask client of an offline command: a given scheduler, or a cluster on this machine.

``--scheduler tcp://host:8786`` connects to a running cluster (``dask scheduler``
and ``dask worker``, installed with the project). Without it, a local cluster of
one single-threaded worker process per core is started for the command and
stopped after it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from risk_engine.errors import ConfigurationError

# How long to wait for a given scheduler to answer.
CONNECT_TIMEOUT_S = 30


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
    cluster = LocalCluster(
        n_workers=workers or local_cores(),
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    )
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def worker_count(client: Any) -> int:
    """The workers the scheduler knows of now (at least one)."""
    return max(1, len(client.scheduler_info().get("workers", {})))
