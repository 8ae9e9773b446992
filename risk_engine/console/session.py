"""The console's sign-in session: a signed, expiring cookie that names the API key used.

The cookie holds no key, only the key's sha256 digest (checked against the
configured admin keys on every request, so removing a key signs its sessions
out), an expiry and the CSRF token that every form must echo. It is HttpOnly,
SameSite=Strict, and Secure when the console is served over TLS.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson

from risk_engine.scopes import key_id

COOKIE = "risk_engine_console"
LIFETIME_S = 8 * 3600


@dataclass(frozen=True)
class ConsoleSession:
    """A signed-in operator: which key (by digest), until when, and the CSRF token."""

    key_sha256: str
    expires: float
    csrf: str

    @property
    def key_id(self) -> str:
        return key_id(self.key_sha256)


def new_session(key_sha256: str, *, now: float | None = None) -> ConsoleSession:
    return ConsoleSession(
        key_sha256=key_sha256,
        expires=(now or time.time()) + LIFETIME_S,
        csrf=secrets.token_urlsafe(24),
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def seal(session: ConsoleSession, key: bytes) -> str:
    """The cookie value: payload and its HMAC."""
    payload = _b64(orjson.dumps([session.key_sha256, session.expires, session.csrf]))
    mac = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{mac}"


def unseal(value: str, key: bytes, *, now: float | None = None) -> ConsoleSession | None:
    """The session in a cookie value; None when forged, malformed or expired."""
    payload, _, mac = value.partition(".")
    expected = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    if not mac or not hmac.compare_digest(mac, expected):
        return None
    try:
        digest, expires, csrf = orjson.loads(_unb64(payload))
        session = ConsoleSession(str(digest), float(expires), str(csrf))
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        return None
    return session if session.expires > (now or time.time()) else None
