"""risk-engine: behavioral risk scoring for step-up authentication."""

from risk_engine.errors import (
    AuthenticationError,
    ConfigurationError,
    ConflictError,
    GeoIPError,
    IncompatibleModelError,
    InvalidEventError,
    NotFoundError,
    ProfileStoreError,
    RiskEngineError,
)
from risk_engine.events import Device, Event, parse_event, parse_event_line

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "ConflictError",
    "Device",
    "Event",
    "GeoIPError",
    "IncompatibleModelError",
    "InvalidEventError",
    "NotFoundError",
    "ProfileStoreError",
    "RiskEngineError",
    "__version__",
    "parse_event",
    "parse_event_line",
]
