"""The compiled decision core: which modules mypyc compiles, and which code is running.

The modules in ``COMPILED`` are plain, ``mypy --strict`` Python, the one source of
truth; the install step (``pip install -e .``, ``make``) also compiles them with
mypyc into extension modules beside their sources, which Python then imports
instead. The build records each source's SHA-256 in ``BUILD_MANIFEST`` so that a
source edited after its build is found (``stale``) instead of silently shadowed.

``RISK_ENGINE_PURE_PYTHON=1`` runs the sources instead of the build (the package
installs ``use_sources`` on import when it is set; benchmarks and the parity test
use it); set at build time, it builds no extension at all.

This module imports the standard library only: the build (setup.py) and the
Makefile read it without the package's dependencies.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PURE_PYTHON_ENV = "RISK_ENGINE_PURE_PYTHON"
# Written by the build next to the compiled modules (setup.py); never committed.
BUILD_MANIFEST = "_compiled.json"
# The decision path's modules: features (each family's score, learn and reasons),
# observation, learn step, burst windows, reasons and the profile's binary form.
# Not engine.py (its Decision is a pydantic model, and benchmarks/bench_engine.py
# times the phases by wrapping the functions it calls), nor challenges.py and
# assembly.py beside it, not policy.py (pydantic), not model/fastpath.py (numba).
COMPILED: tuple[str, ...] = (
    "risk_engine.features.action",
    "risk_engine.features.common",
    "risk_engine.features.crowd",
    "risk_engine.features.device",
    "risk_engine.features.geo",
    "risk_engine.features.learn",
    "risk_engine.features.maturity",
    "risk_engine.features.observation",
    "risk_engine.features.registry",
    "risk_engine.features.sequence",
    "risk_engine.features.session",
    "risk_engine.features.temporal",
    "risk_engine.features.velocity",
    "risk_engine.profiles.bursts",
    "risk_engine.profiles.crowds",
    "risk_engine.profiles.packed",
    "risk_engine.reasons",
)
PACKAGE_DIR = Path(__file__).resolve().parent


def pure_python_requested() -> bool:
    return os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")


def source_path(module: str, package_dir: Path = PACKAGE_DIR) -> Path:
    """The ``.py`` file of a module of ``COMPILED`` under ``package_dir``."""
    parts = module.split(".")[1:]
    return package_dir.joinpath(*parts).with_suffix(".py")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(compiler: str, package_dir: Path = PACKAGE_DIR) -> str:
    """The build manifest's text: the compiler and each compiled source's SHA-256."""
    sources = {module: digest(source_path(module, package_dir)) for module in COMPILED}
    return json.dumps({"compiler": compiler, "sources": sources}, indent=1, sort_keys=True)


def _is_extension(origin: str | None) -> bool:
    return origin is not None and origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def _extension_of(module: str, package_dir: Path) -> Path | None:
    """The compiled file of ``module`` beside its source, if one was built."""
    source = source_path(module, package_dir)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = source.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return None


@dataclass(frozen=True)
class CoreStatus:
    """Which code the decision core runs, and any compiled module older than its source."""

    compiled: tuple[str, ...]
    pure_python: tuple[str, ...]
    stale: tuple[str, ...]
    compiler: str | None

    @property
    def mode(self) -> str:
        if self.compiled and not self.pure_python:
            return f"compiled ({self.compiler or 'unknown compiler'})"
        if not self.compiled:
            why = f"{PURE_PYTHON_ENV}=1" if pure_python_requested() else "not built"
            return f"pure Python ({why})"
        return f"mixed: {len(self.compiled)} compiled, {len(self.pure_python)} pure Python"


def status(package_dir: Path = PACKAGE_DIR) -> CoreStatus:
    """What the modules of ``COMPILED`` run as, without importing them.

    A compiled module is stale when its source's SHA-256 differs from the one its
    build recorded (or the build recorded none): Python would import the build and
    run code the source no longer says.
    """
    try:
        recorded = json.loads((package_dir / BUILD_MANIFEST).read_text())
    except (OSError, ValueError):
        recorded = {}
    sources: dict[str, str] = recorded.get("sources", {})
    compiled, pure, stale = [], [], []
    for module in COMPILED:
        built = _extension_of(module, package_dir)
        if built is not None and sources.get(module) != digest(source_path(module, package_dir)):
            stale.append(module)
        if built is None or pure_python_requested():
            pure.append(module)
        else:
            compiled.append(module)
    return CoreStatus(tuple(compiled), tuple(pure), tuple(stale), recorded.get("compiler"))


def check_fresh(package_dir: Path = PACKAGE_DIR) -> CoreStatus:
    """``status()``; raises RuntimeError naming the stale modules and the rebuild command."""
    found = status(package_dir)
    if found.stale and not pure_python_requested():
        raise RuntimeError(
            "compiled modules older than their sources: "
            + ", ".join(found.stale)
            + ". Rebuild them (`make build`, or `.venv/bin/pip install --no-deps -e .`),"
            f" or run the sources with {PURE_PYTHON_ENV}=1"
        )
    return found


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of ``COMPILED`` as their ``.py`` sources, never as extensions."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not _is_extension(spec.origin):
            return spec
        assert spec.origin is not None
        source = Path(spec.origin).parent / (fullname.rpartition(".")[2] + ".py")
        return importlib.util.spec_from_file_location(fullname, source)


def use_sources() -> None:
    """Import the modules of ``COMPILED`` from their sources from now on."""
    if not any(isinstance(finder, _SourceFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())


def main(argv: list[str]) -> int:
    """``python risk_engine/compiled.py sources``: the compiled sources (for the Makefile)."""
    if argv != ["sources"]:
        print("usage: compiled.py sources", file=sys.stderr)
        return 2
    root = PACKAGE_DIR.parent
    print(" ".join(str(source_path(m).relative_to(root)) for m in COMPILED))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
