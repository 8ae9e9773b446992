"""Dependencies of the routes, as ``Annotated`` aliases: the service, engine, settings, auth."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from risk_engine.api.service import Service
from risk_engine.config import Settings
from risk_engine.engine import Engine
from risk_engine.errors import AuthenticationError, ConfigurationError


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_service(request: Request) -> Service:
    service: Service | None = getattr(request.app.state, "service", None)
    if service is None:
        raise ConfigurationError("the service is not started: its lifespan has not run")
    return service


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServiceDep = Annotated[Service, Depends(get_service)]


def get_engine(service: ServiceDep) -> Engine:
    return service.engine


EngineDep = Annotated[Engine, Depends(get_engine)]

# auto_error=False: a missing key is our AuthenticationError (401), not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="an API key: `risk-engine apikey` makes one")


def check_api_key(settings: Settings, key: str | None) -> None:
    """Accept ``key`` when its sha256 is configured (or auth is off); else AuthenticationError.

    Shared by the FastAPI dependency below and the plain decision endpoint.
    """
    if settings.auth_disabled:
        return
    if not key:
        raise AuthenticationError("an API key is required: send Authorization: Bearer <key>")
    digest = hashlib.sha256(key.encode()).hexdigest()
    # Compare against every entry, without stopping early: timing tells nothing.
    matched = False
    for expected in settings.api_keys_sha256:
        matched |= hmac.compare_digest(digest, expected)
    if not matched:
        raise AuthenticationError("the API key is not valid")


def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Accept the request when its bearer key's sha256 is configured (unless auth is off)."""
    check_api_key(settings, credentials.credentials if credentials is not None else None)


ApiKeyDep = Depends(require_api_key)
