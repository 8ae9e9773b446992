"""``POST /v1/decisions`` as a plain ASGI endpoint: the call every protected action makes.

FastAPI's machinery for a route (dependency solving, request and response
objects, the exception middleware) cost about 65 µs a request on the 2-core
development machine, as much as the engine's whole decision on a warm profile.
This endpoint answers the same requests with the same bodies straight from the
ASGI messages: the API key and its scope, the body, the event's validation (the very pydantic
model and error mapping of the route), the decision, its JSON.

The FastAPI route in ``routes.py`` remains the declaration of record: it makes
the OpenAPI document, and answers identically where this endpoint is not
installed (tests/api/test_endpoint.py holds the two to each other). Every other
path falls through to the FastAPI app untouched.

The engine runs inline on the event loop: a decision is CPU-bound and takes a
few hundred microseconds, less than a hop to the thread pool costs, and one
thread avoids handing the GIL back and forth with the loop. That holds for Redis
too, whose round trips block the loop: measured on one worker, 689 decisions/s
inline against 440 from the thread pool (wrk, 16 connections). Deployments scale
with workers and replicas (README, Sizing).
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import ValidationError
from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from risk_engine.api.auth import authorize, use_caller
from risk_engine.api.errors import error_response, validation_body
from risk_engine.api.service import Service
from risk_engine.errors import ConfigurationError, InvalidEventError, RiskEngineError
from risk_engine.events import Event
from risk_engine.scopes import Scope as KeyScope

PATH = "/v1/decisions"
# orjson's nesting limit; the standard library's fallback parser stops at about the
# same depth (the interpreter's recursion limit).
MAX_JSON_DEPTH = 1024
_JSON = b"application/json"

Headers = list[tuple[bytes, bytes]]


class DecisionEndpoint:
    """ASGI middleware that serves ``POST /v1/decisions`` itself and passes the rest on."""

    def __init__(self, app: ASGIApp, *, state: State) -> None:
        self.app = app
        # The app's state: the lifespan puts the Service there once it is built.
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client went away: nobody to answer
        status, headers, content = await self.answer(scope, body)
        headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def answer(self, scope: Scope, body: bytes) -> tuple[int, Headers, bytes]:
        """(status, headers, body) for one request, errors included."""
        try:
            service = self._service()
            # The route's very check (scope decide); the caller names this request's records.
            use_caller(authorize(service.settings, _bearer_key(scope), KeyScope.DECIDE))
            event = parse_request_event(body, _header(scope, b"content-type"))
            status = 200
            content, extra = service.render(service.decide(event))
        except RiskEngineError as exc:
            status, extra, error_body = error_response(exc, where=f"POST {PATH}")
            content = orjson.dumps(error_body)
        headers = [(b"content-type", _JSON)]
        headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra)
        return status, headers, content

    def _service(self) -> Service:
        service: Service | None = getattr(self.state, "service", None)
        if service is None:
            raise ConfigurationError("the service is not started: its lifespan has not run")
        return service


def parse_request_event(body: bytes, content_type: str | None) -> Event:
    """The event in a request body; InvalidEventError with the route's very 422 body.

    As FastAPI does: a body is read as JSON when it says so (``application/json``,
    ``+json``) or says nothing; the errors are pydantic's, located under ``body``.
    """
    if content_type is not None and not _is_json(content_type):
        raise _invalid(
            [
                {
                    "type": "model_attributes_type",
                    "loc": ("body",),
                    "msg": f"expected a JSON body (application/json), got {content_type}",
                }
            ]
        )
    if not body:
        raise _invalid([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            raise _too_deep() from None
        data = _lenient_json(body)
    try:
        # from_attributes, as FastAPI validates a body: the same errors, word for word.
        return Event.model_validate(data, from_attributes=True)
    except ValidationError as exc:
        located = [
            {**error, "loc": ("body", *error["loc"])}
            for error in exc.errors(include_url=False, include_input=False)
        ]
        raise _invalid(located) from None


def _lenient_json(body: bytes) -> Any:
    """What the standard library makes of a body orjson refused, as FastAPI reads bodies.

    It accepts NaN, Infinity and 1e999, which must then fail as a bad ``amount``
    (naming the field), not as bad JSON.
    """
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        error = {
            "type": "json_invalid",
            "loc": ("body", exc.pos),
            "msg": "JSON decode error",
            "ctx": {"error": exc.msg},
        }
    except UnicodeDecodeError as exc:
        error = {"type": "json_invalid", "loc": ("body",), "msg": f"not UTF-8 ({exc.reason})"}
    except RecursionError:
        # The standard library's parser recurses per level: deep nesting is bad input.
        raise _too_deep() from None
    raise _invalid([error]) from None


def _too_deep() -> InvalidEventError:
    return _invalid(
        [
            {
                "type": "json_invalid",
                "loc": ("body",),
                "msg": f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
            }
        ]
    )


def _invalid(errors: list[dict[str, Any]]) -> InvalidEventError:
    body = validation_body(RequestValidationError(errors), code=InvalidEventError.code)
    return InvalidEventError(body["message"], field=body["field"], errors=body["detail"])


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (BodyLimitMiddleware, outside, bounds it), or None."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _bearer_key(scope: Scope) -> str | None:
    """The credentials of an ``Authorization: Bearer`` header, as FastAPI's HTTPBearer reads."""
    authorization = _header(scope, b"authorization")
    scheme, credentials = get_authorization_scheme_param(authorization)
    if not (authorization and scheme and credentials) or scheme.lower() != "bearer":
        return None
    return credentials
