"""The package's public face: __all__ is exactly the public names, and importing does no work."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from setuptools import find_namespace_packages

import risk_engine


def test_all_lists_exactly_the_public_names() -> None:
    # dir() also names what loads lazily on first use; submodules are no public names.
    public = {
        name
        for name in dir(risk_engine)
        if not name.startswith("_") and not isinstance(getattr(risk_engine, name), ModuleType)
    }
    assert set(risk_engine.__all__) == public | {"__version__"}
    assert len(risk_engine.__all__) == len(set(risk_engine.__all__))
    assert list(risk_engine.__all__) == sorted(risk_engine.__all__)


def test_every_public_name_resolves_to_the_package() -> None:
    for name in risk_engine.__all__:
        value = getattr(risk_engine, name)
        if name == "__version__":
            assert isinstance(value, str) and value
        else:
            assert value.__module__.startswith("risk_engine."), name
    assert "Engine" in {n for n in dir(risk_engine) if not n.startswith("_")}


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        risk_engine.no_such_name  # noqa: B018


def test_errors_share_one_root() -> None:
    errors = [getattr(risk_engine, n) for n in risk_engine.__all__ if n.endswith("Error")]
    assert errors
    for error in errors:
        assert issubclass(error, risk_engine.RiskEngineError)
        assert 400 <= error.status_code < 600


IMPORT_PROBE = textwrap.dedent(
    """
    import os, sys
    import risk_engine
    import risk_engine.cli
    from risk_engine.config import Settings
    from risk_engine.geo import GeoLocator

    found = []
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] != "risk_engine":
            continue
        for attr, value in vars(module).items():
            if isinstance(value, (GeoLocator, Settings)):
                found.append(f"{name}.{attr}")
    print("INSTANCES", found)
    opened = []
    if os.path.isdir("/proc/self/fd"):
        for fd in os.listdir("/proc/self/fd"):
            try:
                opened.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
    if os.path.exists("/proc/self/maps"):
        with open("/proc/self/maps") as maps:
            opened.extend(line.split()[-1] for line in maps if "/" in line)
    print("MMDB", sorted({p for p in opened if p.endswith(".mmdb")}))
    """
)


def probe(cwd: Path, prelude: str = "") -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISK_ENGINE_")}
    done = subprocess.run(
        [sys.executable, "-c", prelude + IMPORT_PROBE],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_the_package_and_cli_does_no_work(tmp_path: Path) -> None:
    stdout = probe(tmp_path)
    assert "INSTANCES []" in stdout, stdout
    assert "MMDB []" in stdout, stdout
    assert list(tmp_path.iterdir()) == []  # no var/, no secret, no database


def test_the_import_probe_sees_work_done_at_import(tmp_path: Path) -> None:
    """The control: a module-level GeoLocator is found, and so is its open database."""
    stdout = probe(tmp_path, "import risk_engine.geo as g\ng.HELD = g.GeoLocator()\n")
    assert "INSTANCES ['risk_engine.geo.HELD']" in stdout, stdout
    assert "MMDB []" not in stdout and ".mmdb" in stdout, stdout


ROOT = Path(__file__).resolve().parents[2]


def test_the_build_finds_one_top_level_package_holding_every_module() -> None:
    """What pyproject tells setuptools to package: risk_engine alone, every subpackage of it.

    (tests/api/test_wheel.py builds the wheel itself; this is the quick check.)
    """
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    # pyproject's packages.find discovers namespace packages too (risk_engine/model has no
    # __init__.py): the same discovery here.
    packages = set(find_namespace_packages(where=str(ROOT), include=include))
    assert {name.split(".")[0] for name in packages} == {"risk_engine"}
    with_modules = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "risk_engine").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert with_modules <= packages, with_modules - packages
    assert "risk_engine.offline.simulate" in packages
