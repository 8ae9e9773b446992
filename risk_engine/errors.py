"""The error tree of the risk engine.

Every error the engine raises on purpose derives from ``RiskEngineError`` and
knows the HTTP status the API answers with, so one handler maps them all::

    RiskEngineError (500)
    ├── InvalidEventError (422)          an event or a log line breaks the contract
    ├── ConfigurationError (500)         settings, policy or data files unusable
    │   ├── GeoIPError (503)             a GeoIP database is missing or corrupt
    │   └── IncompatibleModelError (500) artifact checksum / schema hash refused
    ├── ProfileStoreError (503)          the profile store failed or is unreachable
    │   └── StoreUnavailableError (503)  it did not answer in time or cannot be reached
    ├── DecisionLogError (503)           the decision log failed or is unreachable
    ├── NotFoundError (404)              no such challenge, event or user
    ├── ConflictError (409)              a challenge already used, expired or bound elsewhere
    ├── AuthenticationError (401)        missing or wrong API key
    └── ForbiddenError (403)             a valid API key without the scope the call needs
"""

from __future__ import annotations

from typing import Any


class RiskEngineError(Exception):
    """Root of every deliberate error of the engine."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.context = context

    def to_dict(self) -> dict[str, Any]:
        """The JSON body the API answers with."""
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class InvalidEventError(RiskEngineError):
    """An event (or a line of a log file) does not match the contract."""

    status_code = 422
    code = "invalid_event"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        line: int | None = None,
        source: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message, field=field)
        self.line = line
        self.source = source
        self.errors = errors or []

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        if self.errors:
            body["detail"] = self.errors
        return body


class ConfigurationError(RiskEngineError):
    """Settings, a policy file or a data file cannot be used."""

    code = "configuration_error"


class GeoIPError(ConfigurationError):
    """A GeoIP database is missing, unreadable or corrupt."""

    status_code = 503
    code = "geoip_error"


class IncompatibleModelError(ConfigurationError):
    """A model artifact failed its checksum or was built for other features."""

    code = "incompatible_model"


class ProfileStoreError(RiskEngineError):
    """The profile store failed or could not be reached."""

    status_code = 503
    code = "profile_store_error"


class StoreUnavailableError(ProfileStoreError):
    """The profile store did not answer within its timeout, or cannot be reached at all.

    Unlike a failed statement or a malformed record, this says nothing about the
    next call but "probably the same": callers stop asking for a while (profiles.guard).
    """


class DecisionLogError(RiskEngineError):
    """The decision log (the operator's queryable index) failed or could not be reached."""

    status_code = 503
    code = "decision_log_error"


class NotFoundError(RiskEngineError):
    """The named challenge, event or user does not exist."""

    status_code = 404
    code = "not_found"


class ConflictError(RiskEngineError):
    """The request conflicts with state: a replayed or foreign challenge result."""

    status_code = 409
    code = "conflict"


class AuthenticationError(RiskEngineError):
    """The API key is missing or wrong."""

    status_code = 401
    code = "unauthorized"


class ForbiddenError(RiskEngineError):
    """The API key is valid but lacks the scope the call needs."""

    status_code = 403
    code = "forbidden"
