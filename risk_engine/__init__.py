"""risk-engine: behavioral risk scoring for step-up authentication.

The light names (errors, the event) import eagerly; the ones that pull in
scikit-learn, GeoIP or the web stack load on first use, so that importing the
package (and so ``risk-engine --help``) stays fast and does no work.
"""

import importlib as _importlib
import os as _os
import typing as _typing

# RISK_ENGINE_PURE_PYTHON=1: the decision core's sources instead of their compiled build
# (risk_engine/compiled.py). Set here, before any of those modules can be imported.
if _os.environ.get("RISK_ENGINE_PURE_PYTHON", "") not in ("", "0"):
    from risk_engine.compiled import use_sources as _use_sources

    _use_sources()

from risk_engine.errors import (
    AuthenticationError,
    ConfigurationError,
    ConflictError,
    ForbiddenError,
    GeoIPError,
    IncompatibleModelError,
    InvalidEventError,
    NotFoundError,
    ProfileStoreError,
    RiskEngineError,
)
from risk_engine.events import Device, Event, parse_event, parse_event_line

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "Acr": "risk_engine.decision",
    "Challenge": "risk_engine.decision",
    "Decision": "risk_engine.decision",
    "Engine": "risk_engine.engine",
    "GeoLocator": "risk_engine.geo",
    "Location": "risk_engine.geo",
    "ModelArtifact": "risk_engine.model.artifact",
    "Outcome": "risk_engine.decision",
    "Policy": "risk_engine.policy",
    "Profile": "risk_engine.profiles.model",
    "ProfileStore": "risk_engine.profiles.store",
    "Reason": "risk_engine.decision",
    "RiskEngineClient": "risk_engine.client",
    "RiskModel": "risk_engine.model.detector",
    "Settings": "risk_engine.config",
    "build_engine": "risk_engine.assembly",
    "load_artifact": "risk_engine.model.artifact",
    "load_policy": "risk_engine.policy",
    "open_store": "risk_engine.profiles.factory",
    "run_backtest": "risk_engine.offline.backtest",
}

__all__ = [
    "Acr",
    "AuthenticationError",
    "Challenge",
    "ConfigurationError",
    "ConflictError",
    "Decision",
    "Device",
    "Engine",
    "Event",
    "ForbiddenError",
    "GeoIPError",
    "GeoLocator",
    "IncompatibleModelError",
    "InvalidEventError",
    "Location",
    "ModelArtifact",
    "NotFoundError",
    "Outcome",
    "Policy",
    "Profile",
    "ProfileStore",
    "ProfileStoreError",
    "Reason",
    "RiskEngineClient",
    "RiskEngineError",
    "RiskModel",
    "Settings",
    "__version__",
    "build_engine",
    "load_artifact",
    "load_policy",
    "open_store",
    "parse_event",
    "parse_event_line",
    "run_backtest",
]


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'risk_engine' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
