"""The plain ASGI decision endpoint answers exactly as the FastAPI route it stands in for."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from risk_engine.api import create_app
from risk_engine.api.endpoint import DecisionEndpoint
from risk_engine.assembly import build_engine
from risk_engine.config import Settings

EventFactory = Callable[..., dict[str, Any]]

# Placed by the bundled GeoLite2 City database far from the Oslo of the usual events.
SYDNEY_IP = "203.2.218.214"
# One bad value per field, of each kind pydantic tells apart (type, length, format, range).
MALFORMED: list[tuple[str, Any]] = [
    ("event_id", ""),
    ("event_id", 123),
    ("timestamp", "2026-03-01T08:15:30"),
    ("timestamp", 1767225600),
    ("user_id", "x" * 300),
    ("action", ["login"]),
    ("ip", "999.1.1.1"),
    ("session_id", 7),
    ("device", "d-1"),
    ("device.id", ""),
    ("device.user_agent", 5),
    ("amount", -1),
    ("amount", True),
    ("currency", "nok"),
    ("success", "true"),
    ("payee", ""),
]


def without_endpoint(app: FastAPI) -> FastAPI:
    """The app as it would be without the endpoint: the FastAPI route answers."""
    app.user_middleware = [m for m in app.user_middleware if m.cls is not DecisionEndpoint]
    return app


def without_route(app: FastAPI) -> FastAPI:
    """The app minus the FastAPI route: only the endpoint can answer."""
    app.router.routes = [
        r for r in app.router.routes if not (isinstance(r, APIRoute) and r.path == "/v1/decisions")
    ]
    return app


@pytest.fixture
def twin_clients(
    tmp_path: Path, make_settings: Callable[..., Settings], api_key: str
) -> Iterator[tuple[TestClient, TestClient]]:
    """Two apps, each on its own engine and store, one with the endpoint and one without."""
    clients = []
    for name, strip in (("endpoint", lambda app: app), ("route", without_endpoint)):
        settings = make_settings(
            store=f"sqlite:///{tmp_path / name / 'profiles.db'}", var_dir=tmp_path / name
        )
        app = strip(create_app(settings, engine=build_engine(settings)))
        clients.append(TestClient(app, headers={"Authorization": f"Bearer {api_key}"}))
    with clients[0] as endpoint, clients[1] as route:
        yield endpoint, route


# What is random per call (ids) or per second (expiry): equal in shape, not in value.
_RANDOM = re.compile(rb'"(d-[0-9a-f]{16}|c-[A-Za-z0-9_-]{22})"|"expires_at":"[^"]+"')


def same_answer(a: httpx.Response, b: httpx.Response) -> httpx.Response:
    """Holds the endpoint's answer ``a`` to the route's ``b``; returns ``a``."""
    assert a.status_code == b.status_code, (a.text, b.text)
    assert _RANDOM.sub(b"*", a.content) == _RANDOM.sub(b"*", b.content)
    assert a.headers["content-type"] == b.headers["content-type"]
    hint = "www-authenticate"
    assert (hint in a.headers) == (hint in b.headers)
    if hint in a.headers:
        assert a.headers[hint] == b.headers[hint]
    return a


def test_decisions_are_answered_alike(
    twin_clients: tuple[TestClient, TestClient],
    make_history: Callable[..., list[dict[str, Any]]],
    make_event: EventFactory,
) -> None:
    endpoint, route = twin_clients
    events = [*make_history("u-twin"), make_event(user_id="u-twin", ip=SYDNEY_IP, session_id="s-x")]
    outcomes = set()
    for event in events:
        a, b = endpoint.post("/v1/decisions", json=event), route.post("/v1/decisions", json=event)
        same_answer(a, b)
        outcomes.add(a.json()["decision"])
    # The comparison covered an allowed event and a challenged one (with its header).
    assert {"allow", "step_up"} <= outcomes


@pytest.mark.parametrize(("field", "value"), MALFORMED)
def test_malformed_events_are_refused_alike(
    twin_clients: tuple[TestClient, TestClient], make_event: EventFactory, field: str, value: Any
) -> None:
    event = make_event(amount=10.0, currency="NOK")
    if field.startswith("device."):
        event["device"] = {**event["device"], field.split(".", 1)[1]: value}
    else:
        event[field] = value
    endpoint, route = twin_clients
    answer = same_answer(
        endpoint.post("/v1/decisions", json=event), route.post("/v1/decisions", json=event)
    )
    # Refused, by both, naming the field.
    assert answer.status_code == 422
    assert answer.json()["field"] == field


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'"a string"', "application/json"),
        (b"null", "application/json"),
        (b'{"event_id": "e", "amount": NaN}', "application/json"),
        (b'{"event_id": "e", "amount": 1e999}', "application/json"),
        (b"{}", "application/vnd.api+json"),
        (b"{}", "application/json; charset=utf-8"),
    ],
)
def test_bodies_that_are_no_event_are_refused_alike(
    twin_clients: tuple[TestClient, TestClient], content: bytes, content_type: str
) -> None:
    endpoint, route = twin_clients
    headers = {"content-type": content_type}
    answer = same_answer(
        endpoint.post("/v1/decisions", content=content, headers=headers),
        route.post("/v1/decisions", content=content, headers=headers),
    )
    assert answer.status_code == 422


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-key", "Basic cmVrOng=", "Bearer ", "bearer"]
)
def test_bad_keys_are_refused_alike(
    twin_clients: tuple[TestClient, TestClient], make_event: EventFactory, authorization: str | None
) -> None:
    endpoint, route = twin_clients
    answers = []
    for client in (endpoint, route):
        request = client.build_request("POST", "/v1/decisions", json=make_event())
        del request.headers["authorization"]
        if authorization is not None:
            request.headers["authorization"] = authorization
        answers.append(client.send(request))
    same_answer(*answers)
    assert answers[0].status_code == 401


def test_a_lowercase_bearer_scheme_is_accepted(
    twin_clients: tuple[TestClient, TestClient], make_event: EventFactory, api_key: str
) -> None:
    endpoint, _ = twin_clients
    request = endpoint.build_request("POST", "/v1/decisions", json=make_event())
    request.headers["authorization"] = f"bearer {api_key}"
    assert endpoint.send(request).status_code == 200


def test_the_endpoint_serves_the_path_by_itself(
    settings: Settings, make_event: EventFactory, shared_engine: Any, api_key: str
) -> None:
    app = without_route(create_app(settings, engine=shared_engine))
    with TestClient(app, headers={"Authorization": f"Bearer {api_key}"}) as client:
        response = client.post("/v1/decisions", json=make_event())
        assert response.status_code == 200, response.text
        assert set(orjson.loads(response.content)) >= {"event_id", "score", "decision"}
        # Other methods are still the app's to answer (or refuse).
        assert client.put("/v1/decisions").status_code in (404, 405)
