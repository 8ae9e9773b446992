"""The build step that pyproject.toml cannot declare: mypyc compiles the decision core.

The modules listed in risk_engine/compiled.py (``COMPILED``) become extension modules
beside their sources (``pip install -e .`` builds them in place; a wheel carries
them), with a manifest of the sources' SHA-256 so that an edited source is never
silently shadowed by its old build. RISK_ENGINE_PURE_PYTHON=1 builds no extension.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# risk_engine/compiled.py by path: importing the package would need its dependencies.
_spec = importlib.util.spec_from_file_location("_compiled", ROOT / "risk_engine" / "compiled.py")
assert _spec is not None and _spec.loader is not None
compiled: Any = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = compiled  # its dataclass looks its module up there
_spec.loader.exec_module(compiled)

# The build environment holds setuptools and mypy only (pyproject's build-system), so
# mypy reads no project config (its pydantic plugin is not there) and takes the
# dependencies it cannot find as Any: slower calls into them, the same behaviour.
MYPY_OPTIONS = ["--config-file", "", "--ignore-missing-imports", "--python-version", "3.11"]
GROUP = "risk_engine._core"


class BuildCore(build_ext):
    """Runs mypyc only when extensions are built (not for metadata), then writes the manifest."""

    def finalize_options(self) -> None:
        if self.distribution.ext_modules == [_PLACEHOLDER]:
            from mypyc.build import mypycify

            os.chdir(ROOT)
            package = ROOT / "risk_engine"
            sources = [str(compiled.source_path(m, package)) for m in compiled.COMPILED]
            self.distribution.ext_modules = mypycify(
                [*MYPY_OPTIONS, *sources], opt_level="3", group_name=GROUP
            )
        super().finalize_options()

    def run(self) -> None:
        super().run()
        from mypy.version import __version__ as mypy_version

        text = compiled.manifest(f"mypyc {mypy_version}", ROOT / "risk_engine")
        targets = {Path(self.build_lib) / "risk_engine" / compiled.BUILD_MANIFEST}
        if self.inplace:
            targets.add(ROOT / "risk_engine" / compiled.BUILD_MANIFEST)
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)


# Stands for the mypyc extensions until build_ext asks for them: it marks the
# distribution as one with extension modules (a platform wheel) without running mypyc.
_PLACEHOLDER = Extension(GROUP + "__mypyc", sources=[])

if os.environ.get(compiled.PURE_PYTHON_ENV, "") not in ("", "0"):
    setup()
else:
    setup(ext_modules=[_PLACEHOLDER], cmdclass={"build_ext": BuildCore})
