"""POST /v1/decisions in-process: the contract's shape, every malformed field, limits, auth."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from risk_engine.api import create_app
from risk_engine.config import Settings
from risk_engine.engine import Engine

EventFactory = Callable[..., dict[str, Any]]

CONTRACT_FIELDS = {"event_id", "score", "decision", "reasons", "model_version"}


def test_decision_has_the_contract_shape(make_event: EventFactory, client: TestClient) -> None:
    event = make_event()
    response = client.post("/v1/decisions", json=event)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body.keys() >= CONTRACT_FIELDS
    assert body["event_id"] == event["event_id"]
    assert 0.0 <= body["score"] <= 1.0
    assert body["decision"] in {"allow", "step_up", "deny"}
    for reason in body["reasons"]:
        assert set(reason) == {"code", "detail"}
        assert reason["code"].replace("_", "").isalnum() and reason["code"].islower()
    assert body["decision_id"].startswith("d-")
    assert "shadow" not in body and "features" not in body


def test_unknown_top_level_fields_are_ignored(make_event: EventFactory, client: TestClient) -> None:
    response = client.post("/v1/decisions", json=make_event(color="blue", nested={"a": 1}))
    assert response.status_code == 200, response.text


def test_unknown_action_gets_the_default_policy_class(
    make_event: EventFactory, client: TestClient
) -> None:
    response = client.post("/v1/decisions", json=make_event(action="launch_rocket"))
    assert response.status_code == 200, response.text
    assert response.json()["action_class"] == "default"


def test_features_are_echoed_only_when_configured(
    make_event: EventFactory,
    make_settings: Callable[..., Settings],
    api_key: str,
    shared_engine: Engine,
) -> None:
    app = create_app(make_settings(include_features=True), engine=shared_engine)
    with TestClient(app, headers={"Authorization": f"Bearer {api_key}"}) as test_client:
        body = test_client.post("/v1/decisions", json=make_event()).json()
    assert isinstance(body["features"], dict) and "impossible_travel" in body["features"]


LONG = "x" * 300
MALFORMED: list[tuple[str, str, Any]] = [
    ("event_id", "event_id", ""),
    ("event_id", "event_id", "e" * 129),
    ("event_id", "event_id", 123),
    ("event_id", "event_id", None),
    ("timestamp", "timestamp", "yesterday"),
    ("timestamp", "timestamp", "2026-03-01T08:15:30"),
    ("timestamp", "timestamp", "2026-03-01"),
    ("timestamp", "timestamp", 1767225600),
    ("timestamp", "timestamp", "2026-13-01T08:15:30Z"),
    ("user_id", "user_id", ""),
    ("user_id", "user_id", LONG),
    ("user_id", "user_id", 42),
    ("action", "action", ""),
    ("action", "action", ["login"]),
    ("ip", "ip", "999.1.1.1"),
    ("ip", "ip", "not-an-ip"),
    ("ip", "ip", 16909060),
    ("ip", "ip", ""),
    ("session_id", "session_id", ""),
    ("session_id", "session_id", 7),
    ("device", "device", "d-1"),
    ("device", "device", ["d-1"]),
    ("device", "device.id", 5),
    ("device", "device.id", ""),
    ("device", "device.user_agent", 5),
    ("device", "device.platform", True),
    ("device", "device.timezone", 1.5),
    ("device", "device.language", ["nb"]),
    ("device", "device.screen", 1440),
    ("amount", "amount", -1),
    ("amount", "amount", "100"),
    ("amount", "amount", "NaN"),
    ("amount", "amount", True),
    ("currency", "currency", "nok"),
    ("currency", "currency", "NOKK"),
    ("currency", "currency", 578),
    ("success", "success", "true"),
    ("success", "success", 1),
    ("payee", "payee", ""),
]


@pytest.mark.parametrize(("key", "field", "value"), MALFORMED)
def test_each_malformed_field_is_named(
    make_event: EventFactory, client: TestClient, key: str, field: str, value: Any
) -> None:
    event = make_event(amount=10.0, currency="NOK")
    if field.startswith("device."):
        event["device"] = {**event["device"], field.split(".", 1)[1]: value}
    else:
        event[key] = value
    response = client.post("/v1/decisions", json=event)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_event"
    assert body["field"] == field
    assert field in body["message"]
    assert body["detail"][0]["field"] == field


@pytest.mark.parametrize("missing", ["event_id", "timestamp", "user_id", "action", "ip"])
def test_each_missing_required_field_is_named(
    make_event: EventFactory, client: TestClient, missing: str
) -> None:
    event = make_event()
    del event[missing]
    response = client.post("/v1/decisions", json=event)
    assert response.status_code == 422
    assert response.json()["field"] == missing


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_amounts_are_refused(client: TestClient, literal: bytes) -> None:
    body = (
        b'{"event_id": "e-nan", "timestamp": "2026-03-01T08:15:30Z", "user_id": "u",'
        b' "action": "transfer", "ip": "84.208.0.1", "amount": ' + literal + b"}"
    )
    response = client.post(
        "/v1/decisions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "amount"


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'"a string"', "application/json"),
        (b"event_id=e1", "application/x-www-form-urlencoded"),
        (b"\xff\xfe\x00", "application/json"),
    ],
)
def test_a_body_that_is_no_event_object_is_422(
    client: TestClient, content: bytes, content_type: str
) -> None:
    response = client.post("/v1/decisions", content=content, headers={"content-type": content_type})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_event"
    assert response.json()["field"]


def test_an_oversized_body_is_413(
    make_event: EventFactory, client: TestClient, settings: Settings
) -> None:
    event = make_event(padding="x" * (settings.max_body_bytes + 1))
    response = client.post("/v1/decisions", json=event)
    assert response.status_code == 413
    body = response.json()
    assert body["limit"] == settings.max_body_bytes
    assert str(settings.max_body_bytes) in body["message"]


def test_an_oversized_streamed_body_is_413(client: TestClient, settings: Settings) -> None:
    chunk = b" " * 8192

    def chunks() -> Any:
        yield b'{"event_id": "e-big", "pad": "'
        for _ in range(settings.max_body_bytes // len(chunk) + 2):
            yield chunk
        yield b'"}'

    # A generator body goes out chunked: no Content-Length to check up front.
    response = client.post(
        "/v1/decisions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


def test_a_small_streamed_body_is_served(make_event: EventFactory, client: TestClient) -> None:
    import orjson

    data = orjson.dumps(make_event())
    response = client.post(
        "/v1/decisions",
        content=iter([data[:10], data[10:]]),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": "Basic cmVrOng="},
        {"Authorization": "Bearer "},
    ],
)
def test_v1_needs_a_valid_api_key(
    make_event: EventFactory, settings: Settings, headers: dict[str, str], shared_engine: Engine
) -> None:
    with TestClient(create_app(settings, engine=shared_engine), headers=headers) as anonymous:
        for method, path in (
            ("POST", "/v1/decisions"),
            ("GET", "/v1/model"),
            ("POST", "/v1/admin/reload"),
            ("DELETE", "/v1/users/u-1"),
            ("GET", "/metrics"),
        ):
            response = anonymous.request(method, path, json=make_event())
            assert response.status_code == 401, (path, response.text)
            assert response.json()["error"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")
        # The probes and the documents stay open.
        for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
            assert anonymous.get(path).status_code == 200, path


def test_auth_can_be_disabled_for_local_development(
    make_event: EventFactory, make_settings: Callable[..., Settings], shared_engine: Engine
) -> None:
    app = create_app(make_settings(auth_disabled=True), engine=shared_engine)
    with TestClient(app) as anonymous:
        assert anonymous.post("/v1/decisions", json=make_event()).status_code == 200


def test_unknown_route_answers_json_404(client: TestClient) -> None:
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
