"""Fixtures of the unit tests that need a real Dask cluster."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = [(tmp_path / f"dask-{k}.log").open("wb") for k in range(3)]
    common = {"cwd": ROOT, "stderr": subprocess.STDOUT}
    processes = [
        subprocess.Popen(
            [
                str(BIN / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dashboard-address",
                ":0",
            ],
            stdout=logs[0],
            **common,  # type: ignore[arg-type]
        )
    ]
    try:
        processes += [
            subprocess.Popen(
                [
                    str(BIN / "dask"),
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--nworkers",
                    "1",
                    "--host",
                    "127.0.0.1",
                    "--dashboard-address",
                    ":0",
                ],
                stdout=logs[k],
                **common,  # type: ignore[arg-type]
            )
            for k in (1, 2)
        ]
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs:
            log.close()


# A real HTTP file server: uvicorn serving a directory with Starlette's StaticFiles
# (HEAD, Content-Length and byte ranges, as object stores and web servers answer).
_FILE_SERVER = (
    "import sys, uvicorn; from starlette.staticfiles import StaticFiles; "
    "uvicorn.run(StaticFiles(directory=sys.argv[1]), host='127.0.0.1', "
    "port=int(sys.argv[2]), log_level='warning')"
)


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, the directory it serves): files put there are at base URL + name."""
    import time

    import httpx

    served = tmp_path / "served"
    served.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "file-server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", _FILE_SERVER, str(served), str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        (served / "up.txt").write_bytes(b"up")
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/up.txt").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"the file server did not start: {process.poll()}")
            time.sleep(0.05)
        yield base, served
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
