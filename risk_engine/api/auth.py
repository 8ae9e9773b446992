"""API keys and their scopes, and the caller each audit record names.

One check for the FastAPI routes (``deps.py``) and the plain decision endpoint
(``endpoint.py``): ``authorize`` answers 401 for a missing or unknown key and
403 for a known key without the scope, and returns the caller's key id, which
``use_caller`` makes the caller of the audit records the request writes.
"""

from __future__ import annotations

import hashlib
import hmac
from contextvars import ContextVar

from risk_engine.config import Settings
from risk_engine.errors import AuthenticationError, ForbiddenError
from risk_engine.scopes import Scope, key_id

AUTH_DISABLED = "auth-disabled"
# Records written outside a request (none today) say so rather than name a key.
INTERNAL = "internal"

_caller: ContextVar[str] = ContextVar("risk_engine_caller", default=INTERNAL)


def current_caller() -> str:
    """The key id (or ``auth-disabled``) of the request being served."""
    return _caller.get()


def use_caller(caller: str) -> None:
    """Name the caller for the rest of this request's context (its task and what it starts)."""
    _caller.set(caller)


def granted_scopes(settings: Settings, key: str | None) -> frozenset[Scope]:
    """The scopes ``key`` holds (none for a missing or unknown key); every scope with auth off."""
    if settings.auth_disabled:
        return frozenset(Scope)
    return _match(settings, key)[1] if key else frozenset()


def authorize(settings: Settings, key: str | None, scope: Scope) -> str:
    """The caller's key id if ``key`` holds ``scope``; else AuthenticationError, ForbiddenError."""
    if settings.auth_disabled:
        return AUTH_DISABLED
    if not key:
        raise AuthenticationError("an API key is required: send Authorization: Bearer <key>")
    digest, granted = _match(settings, key)
    if not granted:
        raise AuthenticationError("the API key is not valid")
    if scope not in granted:
        raise ForbiddenError(f"this API key lacks the {scope.value} scope that this call needs")
    return key_id(digest)


def _match(settings: Settings, key: str) -> tuple[str, frozenset[Scope]]:
    """The key's digest and the scopes of every configured entry it matches."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return digest, scopes_of_digest(settings, digest)


def scopes_of_digest(settings: Settings, digest: str) -> frozenset[Scope]:
    """The scopes of every configured entry whose sha256 is ``digest`` (the console's
    session holds the digest, not the key)."""
    # Compare against every entry, without stopping early: timing tells nothing.
    granted: frozenset[Scope] = frozenset()
    for expected, scopes in settings.key_table:
        if hmac.compare_digest(digest, expected):
            granted |= scopes
    return granted
