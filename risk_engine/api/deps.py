"""Dependencies of the routes, as ``Annotated`` aliases: the service, engine, settings, scopes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from risk_engine.api.auth import authorize, use_caller
from risk_engine.api.service import Service
from risk_engine.config import Settings
from risk_engine.engine import Engine
from risk_engine.errors import ConfigurationError
from risk_engine.scopes import Scope


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

BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def bearer_key(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials is not None else None


def require_scope(scope: Scope) -> Any:
    """A dependency accepting only keys that hold ``scope`` (401 unknown key, 403 wrong scope).

    It is async on purpose: it runs in the request's own context, so the caller it
    names reaches the route and the audit records the route writes (a sync
    dependency runs in a worker thread, whose context changes are lost).
    """

    async def require(settings: SettingsDep, credentials: BearerDep) -> None:
        use_caller(authorize(settings, bearer_key(credentials), scope))

    return Depends(require)


DecideKeyDep = require_scope(Scope.DECIDE)
AdminKeyDep = require_scope(Scope.ADMIN)
MetricsKeyDep = require_scope(Scope.METRICS)
