"""The app's exception handlers: one for the engine's error tree, one for bad requests.

``RiskEngineError`` subclasses carry their HTTP status and body; request
validation failures become 422 bodies that name the offending field, never 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from risk_engine.api.responses import JSONBody
from risk_engine.errors import (
    AuthenticationError,
    ForbiddenError,
    InvalidEventError,
    RiskEngineError,
)

log = logging.getLogger("risk_engine.api")

# Parts of a validation error's location that name a place, not a field.
_LOCATIONS = frozenset({"body", "path", "query", "header", "cookie"})


def field_of(loc: tuple[int | str, ...]) -> str:
    """``("body", "device", "id")`` -> ``"device.id"``; the whole body -> ``"body"``."""
    parts = [str(p) for p in loc if not isinstance(p, int)]
    if parts and parts[0] in _LOCATIONS:
        where, parts = parts[0], parts[1:]
    else:
        where = "body"
    # Pydantic names union members and validators ("function-after[...]"): not fields.
    fields = [p for p in parts if p.isidentifier()]
    return ".".join(fields) or where


def validation_body(exc: RequestValidationError, *, code: str) -> dict[str, Any]:
    """The 422 body: the first field named, every problem listed."""
    detail = []
    for error in exc.errors():
        detail.append(
            {
                "field": field_of(tuple(error.get("loc", ()))),
                "message": str(error.get("msg", "invalid")),
                "type": str(error.get("type", "value_error")),
            }
        )
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in detail) or "invalid request"
    first = detail[0]["field"] if detail else "body"
    return {"error": code, "message": summary, "field": first, "detail": detail}


def _invalid_code(request: Request) -> str:
    """The contract's word for a bad event; other bodies are plain bad requests."""
    return InvalidEventError.code if request.url.path == "/v1/decisions" else "invalid_request"


def error_response(
    exc: RiskEngineError, *, where: str
) -> tuple[int, list[tuple[str, str]], dict[str, Any]]:
    """(status, extra headers, body) of an engine error: the one mapping of the error tree.

    ``where`` ("POST /v1/decisions") goes into the log line of a server-side error.
    """
    if exc.status_code >= 500:
        log.error("%s: %s", where, exc.message)
    headers = []
    if isinstance(exc, AuthenticationError):
        headers.append(("WWW-Authenticate", 'Bearer realm="risk-engine"'))
    elif isinstance(exc, ForbiddenError):
        # RFC 6750: a valid token without the scope the resource needs.
        headers.append(
            ("WWW-Authenticate", 'Bearer realm="risk-engine", error="insufficient_scope"')
        )
    return exc.status_code, headers, exc.to_dict()


async def _engine_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RiskEngineError)
    status, headers, body = error_response(exc, where=f"{request.method} {request.url.path}")
    return JSONBody(body, status_code=status, headers=dict(headers))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return JSONBody(validation_body(exc, code=_invalid_code(request)), status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    # Routing answers (404 unknown path, 405 wrong method) in the same body shape.
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot decode (not UTF-8, nesting too deep):
        # bad input, which the contract answers with 422 naming the body.
        return JSONBody(
            {
                "error": _invalid_code(request),
                "message": f"body: {exc.detail} (expected one JSON object in UTF-8)",
                "field": "body",
            },
            status_code=422,
        )
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONBody(
        {"error": code, "message": str(exc.detail)},
        status_code=exc.status_code,
        headers=exc.headers,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(RiskEngineError, _engine_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
