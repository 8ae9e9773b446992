"""The built wheel serves decisions from a fresh virtualenv, with no repository files.

Builds the wheel from a copy of the source tree (so the build leaves nothing in the
checkout), installs it into a new virtualenv with its dependencies from the package
index, starts `risk-engine serve --no-auth` from that virtualenv in an empty
directory, and asks for one decision: the default model, the policy and the GeoIP
database must all come from the installed distribution.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import venv
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import risk_engine
from risk_engine.compiled import BUILD_MANIFEST, COMPILED

# Building the wheel compiles the decision core (setup.py): minutes on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
# What the source copy leaves out: caches, environments, build output (the checkout's
# compiled core too: the wheel's build compiles its own), local state.
SKIP = shutil.ignore_patterns(
    ".git",
    ".venv",
    "var",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "*.so",
    BUILD_MANIFEST,
)
# One top-level package: the offline code (simulate, train, evaluate, calibrate) is
# risk_engine.offline.
TOP_LEVEL = {"risk_engine"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=SKIP)
    out = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
        check=True,
        timeout=1200,
    )
    (built,) = out.glob("risk_engine-*.whl")
    return built


def test_the_wheel_holds_the_default_model_and_no_stray_packages(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == TOP_LEVEL
    assert "risk_engine/data/default.npz" in names
    assert "risk_engine/offline/train.py" in names
    assert "risk_engine/offline/simulate/simulator.py" in names
    assert "risk_engine/data/default.npz.sha256" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_the_wheel_carries_the_compiled_core(wheel: Path, installed: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in COMPILED:
        stem = module.replace(".", "/") + "."
        assert any(n.startswith(stem) and n.endswith(".so") for n in names), module
        assert stem + "py" in names, module
    assert f"risk_engine/{BUILD_MANIFEST}" in names
    # Installed, the core runs compiled, from a build of the sources it ships.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RISK_ENGINE_")}
    mode = subprocess.run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "from risk_engine.compiled import check_fresh; print(check_fresh().mode)",
        ],
        env=clean,
        cwd=installed,  # not the checkout, whose risk_engine would come first on the path
        capture_output=True,
        text=True,
        check=True,
    )
    assert mode.stdout.startswith("compiled (mypyc ")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv holding the wheel and its dependencies, nothing of the checkout."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        env=clean,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return env_dir


@pytest.fixture
def server(installed: Path, tmp_path: Path) -> Iterator[str]:
    run = tmp_path / "run"
    run.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("RISK_ENGINE_")
    }
    env["PATH"] = f"{installed / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    port = _free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(installed / "bin" / "risk-engine"), "serve", "--no-auth", "--port", str(port)],
            cwd=run,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start:\n{log_path.read_text()}")
            try:
                if httpx.get(base_url + "/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield base_url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def test_the_installed_wheel_serves_a_decision(
    server: str, installed: Path, tmp_path: Path, make_event: Callable[..., dict[str, Any]]
) -> None:
    response = httpx.post(server + "/v1/decisions", json=make_event(), timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["decision"] in {"allow", "step_up", "deny"}
    assert 0.0 <= body["score"] <= 1.0
    model = httpx.get(server + "/v1/model", timeout=10).json()
    assert body["model_version"] == model["model_version"]
    # The engine's state went to the working directory, not into the virtualenv.
    assert (tmp_path / "run" / "var" / "profiles.db").is_file()
    version = subprocess.run(
        [str(installed / "bin" / "risk-engine"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert version.stdout.strip() == f"risk-engine {risk_engine.__version__}"
