"""Bad input a hostile client sends (issue 15): every body gets 2xx or 4xx, never a 500.

JSON nested past the parser's depth, timestamps at the ends of the calendar and
timestamps ahead of the server's clock are each answered with 422 naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from risk_engine.api import create_app
from risk_engine.config import Settings
from risk_engine.engine import Engine

EventFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# conftest's API_KEY (scope decide).
API_KEY = "rek_test-key-for-the-api-tests"
JSON_ROUTES = ("/v1/decisions", "/v1/challenges/c-1/result", "/v1/events/e-1/feedback")


def _deep_extra(depth: int) -> bytes:
    """A valid event but for an unknown field nested ``depth`` arrays deep."""
    event = {
        "event_id": "e-deep",
        "timestamp": "2026-03-01T08:15:30Z",
        "user_id": "u-deep",
        "action": "login",
        "ip": "81.2.69.160",
    }
    return orjson.dumps(event)[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}"


# Each under the 64 KiB body limit, each deeper than orjson's 1024 levels.
DEEP_BODIES = {
    "arrays": b"[" * 1025,
    "objects": b'{"a":' * 1025,
    "arrays-to-the-limit": b"[" * 60_000,
    "valid-event-deep-extra": _deep_extra(3000),
    "closed-arrays-with-nan": b"[" * 2000 + b"NaN" + b"]" * 2000,
}


@pytest.mark.parametrize("route", JSON_ROUTES)
@pytest.mark.parametrize("name", DEEP_BODIES)
def test_json_nested_too_deep_is_422_naming_the_body(
    client: TestClient, route: str, name: str
) -> None:
    response = client.post(
        route, content=DEEP_BODIES[name], headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "body"


# The extremes of issue 15: valid RFC 3339, outside the accepted range.
EXTREMES: list[tuple[str, str | None]] = [
    ("9999-12-31T23:59:59Z", "Asia/Tokyo"),
    ("9999-12-31T23:59:59Z", None),
    ("0001-01-01T00:00:00Z", None),
    ("0001-01-01T00:00:00Z", "America/New_York"),
    ("1969-12-31T23:59:59Z", "Europe/Oslo"),
    ("2100-01-01T00:00:00Z", "Pacific/Kiritimati"),
    ("2099-12-31T23:00:00-01:00", "Europe/Oslo"),
]


@pytest.mark.parametrize(("timestamp", "timezone"), EXTREMES)
def test_timestamp_out_of_range_is_422_naming_timestamp(
    settings: Settings,
    shared_engine: Engine,
    auth: dict[str, str],
    make_event: EventFactory,
    timestamp: str,
    timezone: str | None,
) -> None:
    # Past and future skew off: the range alone answers.
    app = create_app(settings.model_copy(update={"max_future_skew_s": 0}), engine=shared_engine)
    event = make_event(timestamp=timestamp)
    event["device"]["timezone"] = timezone
    with TestClient(app, headers=auth) as client:
        response = client.post("/v1/decisions", json=event)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "timestamp"
    assert "1970-01-01" in response.json()["message"]


def test_the_ends_of_the_range_are_accepted(
    settings: Settings, shared_engine: Engine, auth: dict[str, str], make_event: EventFactory
) -> None:
    app = create_app(settings.model_copy(update={"max_future_skew_s": 0}), engine=shared_engine)
    with TestClient(app, headers=auth) as client:
        for timestamp in ("1970-01-01T00:00:00Z", "2099-12-31T23:59:59Z"):
            event = make_event(timestamp=timestamp)
            event["device"]["timezone"] = "Pacific/Kiritimati"
            response = client.post("/v1/decisions", json=event)
            assert response.status_code == 200, response.text


def test_the_contract_example_from_months_ago_is_decided(
    client: TestClient, make_event: EventFactory
) -> None:
    response = client.post("/v1/decisions", json=make_event(timestamp="2026-03-01T08:15:30Z"))
    assert response.status_code == 200, response.text


def _post_at(
    app_settings: Settings, engine: Engine, event: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    key = {"Authorization": f"Bearer {API_KEY}"}
    with TestClient(create_app(app_settings, engine=engine), headers=key) as client:
        response = client.post("/v1/decisions", json=event)
    return response.status_code, response.json()


def test_an_event_from_the_future_is_422_naming_timestamp(
    settings: Settings, shared_engine: Engine, make_event: EventFactory
) -> None:
    ahead = stamp(datetime.now(UTC) + timedelta(hours=1))
    status, body = _post_at(settings, shared_engine, make_event(timestamp=ahead))
    assert status == 422, body
    assert body["field"] == "timestamp"
    assert body["detail"][0]["field"] == "timestamp"
    # Within the default skew (300 s): decided.
    near = stamp(datetime.now(UTC) + timedelta(seconds=60))
    assert _post_at(settings, shared_engine, make_event(timestamp=near))[0] == 200


def test_future_skew_zero_turns_the_bound_off(
    settings: Settings, shared_engine: Engine, make_event: EventFactory
) -> None:
    ahead = stamp(datetime.now(UTC) + timedelta(days=30))
    relaxed = settings.model_copy(update={"max_future_skew_s": 0})
    assert _post_at(relaxed, shared_engine, make_event(timestamp=ahead))[0] == 200


def test_the_past_bound_is_opt_in(
    settings: Settings, shared_engine: Engine, make_event: EventFactory
) -> None:
    old = make_event(timestamp="2026-03-01T08:15:30Z")
    strict = settings.model_copy(update={"max_past_skew_s": 86400})
    status, body = _post_at(strict, shared_engine, old)
    assert status == 422, body
    assert body["field"] == "timestamp"
    recent = make_event(timestamp=stamp(datetime.now(UTC) - timedelta(hours=1)))
    assert _post_at(strict, shared_engine, recent)[0] == 200


def test_the_skew_settings_are_validated(make_settings: Callable[..., Settings]) -> None:
    defaults = make_settings()
    assert (defaults.max_future_skew_s, defaults.max_past_skew_s) == (300.0, 0.0)
    assert make_settings(max_future_skew_s=0, max_past_skew_s=3600).max_past_skew_s == 3600
    with pytest.raises(ValueError, match="max_future_skew_s"):
        make_settings(max_future_skew_s=-1)
    with pytest.raises(ValueError, match="body_timeout_s"):
        make_settings(body_timeout_s=0)
