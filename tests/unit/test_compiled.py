"""The compiled core's bookkeeping: a build older than its source is found, never run silently."""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from risk_engine import compiled
from risk_engine.compiled import COMPILED, check_fresh, manifest, source_path, status

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the core's sources, with an extension file beside the first of them."""
    monkeypatch.delenv(compiled.PURE_PYTHON_ENV, raising=False)
    package = tmp_path / "risk_engine"
    for module in COMPILED:
        target = source_path(module, package)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source_path(module), target)
    source_path(COMPILED[0], package).with_suffix(SUFFIX).write_bytes(b"built")
    (package / compiled.BUILD_MANIFEST).write_text(manifest("mypyc test", package))
    return package


def test_a_build_of_the_current_sources_is_fresh(package: Path) -> None:
    found = check_fresh(package)
    assert found.compiled == (COMPILED[0],)
    assert found.pure_python == COMPILED[1:]
    assert found.stale == ()
    assert found.compiler == "mypyc test"
    assert found.mode.startswith("mixed")


def test_an_edited_source_makes_its_build_stale(package: Path) -> None:
    with source_path(COMPILED[0], package).open("a") as f:
        f.write("\n# edited\n")
    assert status(package).stale == (COMPILED[0],)
    with pytest.raises(RuntimeError, match=COMPILED[0].replace(".", r"\.")):
        check_fresh(package)


def test_a_build_without_its_manifest_is_stale(package: Path) -> None:
    (package / compiled.BUILD_MANIFEST).unlink()
    assert status(package).stale == (COMPILED[0],)


def test_an_edited_source_without_a_build_is_not_stale(package: Path) -> None:
    with source_path(COMPILED[1], package).open("a") as f:
        f.write("\n# edited\n")
    assert status(package).stale == ()


def test_the_pure_python_switch_runs_sources_and_ignores_a_stale_build(
    package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with source_path(COMPILED[0], package).open("a") as f:
        f.write("\n# edited\n")
    monkeypatch.setenv(compiled.PURE_PYTHON_ENV, "1")
    found = check_fresh(package)
    assert found.compiled == ()
    assert found.mode == f"pure Python ({compiled.PURE_PYTHON_ENV}=1)"


def test_the_pure_python_switch_imports_every_core_module_from_its_source() -> None:
    code = (
        "import importlib, risk_engine.compiled as c\n"
        "print(all(importlib.import_module(m).__file__.endswith('.py') for m in c.COMPILED))"
    )
    env = {**os.environ, compiled.PURE_PYTHON_ENV: "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "True"


def test_the_makefile_reads_the_core_sources_from_the_list() -> None:
    done = subprocess.run(
        [sys.executable, "risk_engine/compiled.py", "sources"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    files = done.stdout.split()
    assert files == [str(source_path(m).relative_to(ROOT)) for m in COMPILED]
    assert all((ROOT / f).is_file() for f in files)


def test_the_switch_is_no_unknown_setting_at_start_up() -> None:
    from risk_engine.config import check_environment

    check_environment({compiled.PURE_PYTHON_ENV: "1"})
