"""Feedback is a training label: only for events the service decided, one label per event.

On every store: a label for an event id never issued is refused (404), the same
label again is idempotent (200, recorded once), a conflicting one is refused (409).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from risk_engine.api import create_app
from risk_engine.assembly import build_engine
from risk_engine.config import Settings
from risk_engine.profiles.redis import RedisStore

EventFactory = Callable[..., dict[str, Any]]
AUTH = {"Authorization": "Bearer rek_test-key-for-the-api-tests"}


@pytest.fixture(params=["sqlite", "redis", "memory"])
def client(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> Iterator[TestClient]:
    if request.param == "redis":
        settings = make_settings(store="memory://")
        store = RedisStore(
            request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix")
        )
        engine = build_engine(settings, store=store)
        try:
            with TestClient(create_app(settings, engine=engine), headers=AUTH) as test_client:
                yield test_client
        finally:
            store.close()
        return
    settings = make_settings() if request.param == "sqlite" else make_settings(store="memory://")
    with TestClient(create_app(settings), headers=AUTH) as test_client:
        yield test_client


def test_feedback_for_an_event_never_issued_is_refused(client: TestClient) -> None:
    response = client.post("/v1/events/e-never-issued/feedback", json={"label": "confirmed_fraud"})
    assert response.status_code == 404, response.text
    assert response.json()["field"] == "event_id"


def test_the_same_label_is_idempotent_and_a_conflicting_one_refused(
    client: TestClient, make_event: EventFactory
) -> None:
    event = make_event()
    assert client.post("/v1/decisions", json=event).status_code == 200
    url = f"/v1/events/{event['event_id']}/feedback"
    first = client.post(url, json={"label": "confirmed_fraud", "note": "chargeback"})
    assert first.status_code == 200, first.text
    again = client.post(url, json={"label": "confirmed_fraud"})
    assert again.status_code == 200, again.text
    assert again.json() == {"event_id": event["event_id"], "label": "confirmed_fraud"}
    conflict = client.post(url, json={"label": "confirmed_legit"})
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["field"] == "label"
    service = client.app.state.service  # type: ignore[attr-defined]
    lines = [orjson.loads(x) for x in service.feedback_log.path.read_bytes().splitlines()]
    assert [(x["event_id"], x["label"]) for x in lines] == [(event["event_id"], "confirmed_fraud")]
