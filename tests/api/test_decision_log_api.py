"""The query API over the decision log: GET /v1/decisions and a user's timeline."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from risk_engine.api import create_app
from risk_engine.config import Settings

EventFactory = Callable[..., dict[str, Any]]


class SplitKeys:
    """POSTs with the decide key, GETs and DELETEs with the admin key, as deployments split them."""

    def __init__(self, client: TestClient, decide_key: str, admin_key: str) -> None:
        self.app = client.app
        self._client = client
        self._decide = {"Authorization": f"Bearer {decide_key}"}
        self._admin = {"Authorization": f"Bearer {admin_key}"}

    def post(self, url: str, **kwargs: Any) -> Any:
        return self._client.post(url, headers=self._decide, **kwargs)

    def get(self, url: str, **kwargs: Any) -> Any:
        return self._client.get(url, headers=self._admin, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> Any:
        return self._client.delete(url, headers=self._admin, **kwargs)


@pytest.fixture(params=["process", "thread"])
def app_client(
    request: pytest.FixtureRequest,
    make_settings: Callable[..., Settings],
    api_key: str,
    admin_api_key: str,
) -> Iterator[SplitKeys]:
    """The app with an engine of its own (its own decision log in tmp_path), either writer."""
    settings = make_settings(decision_log_writer=request.param)
    with TestClient(create_app(settings)) as client:
        yield SplitKeys(client, api_key, admin_api_key)


def flush(client: Any) -> None:
    writer = client.app.state.service.decision_log  # type: ignore[attr-defined]
    assert writer.flush()


def test_decisions_are_queryable_by_user_decision_and_page(
    app_client: Any, make_event: EventFactory, make_history: Callable[..., Any]
) -> None:
    for event in make_history("alice", days=3):
        assert app_client.post("/v1/decisions", json=event).status_code == 200
    sydney = make_event(
        user_id="alice",
        ip="203.2.218.214",
        session_id="s-x",
        action="transfer",
        amount=5000.0,
        currency="NOK",
        device={"id": "d-new"},
    )
    stepped = app_client.post("/v1/decisions", json=sydney).json()
    assert app_client.post("/v1/decisions", json=make_event(user_id="bob")).status_code == 200
    flush(app_client)

    alice = app_client.get("/v1/decisions", params={"user_id": "alice", "limit": 4}).json()
    assert len(alice["items"]) == 4 and alice["next_cursor"]
    assert alice["items"][0]["event_id"] == sydney["event_id"]
    seen = [i["event_id"] for i in alice["items"]]
    cursor = alice["next_cursor"]
    while cursor:
        page = app_client.get(
            "/v1/decisions", params={"user_id": "alice", "limit": 4, "cursor": cursor}
        ).json()
        seen.extend(i["event_id"] for i in page["items"])
        cursor = page["next_cursor"]
    assert len(seen) == 10 and len(set(seen)) == 10

    by_decision = app_client.get(
        "/v1/decisions", params={"decision": stepped["decision"], "user_id": "alice"}
    ).json()["items"]
    assert sydney["event_id"] in {i["event_id"] for i in by_decision}
    code = stepped["reasons"][0]["code"]
    by_reason = app_client.get("/v1/decisions", params={"reason": code}).json()["items"]
    assert sydney["event_id"] in {i["event_id"] for i in by_reason}
    row = next(i for i in by_reason if i["event_id"] == sydney["event_id"])
    assert row["country"] == "AU" and row["ip"] == "203.2.218.0" and row["amount"] == 5000.0
    money = app_client.get("/v1/decisions", params={"action_class": "money"}).json()["items"]
    assert {i["action"] for i in money} == {"transfer"}


def test_timeline_shows_step_up_results_and_feedback(
    app_client: Any, make_event: EventFactory, make_history: Callable[..., Any]
) -> None:
    for past in make_history("carol", days=3):
        app_client.post("/v1/decisions", json=past)
    event = make_event(
        user_id="carol", ip="203.2.218.214", session_id="s-new", device={"id": "d-new"}
    )
    decision = app_client.post("/v1/decisions", json=event).json()
    assert decision["decision"] == "step_up"
    result = app_client.post(
        f"/v1/challenges/{decision['challenge']['id']}/result",
        json={"passed": True, "method": "webauthn", "session_id": event["session_id"]},
    )
    assert result.status_code == 200
    app_client.post(f"/v1/events/{event['event_id']}/feedback", json={"label": "confirmed_legit"})
    flush(app_client)
    items = app_client.get("/v1/users/carol/timeline").json()["items"]
    assert [r["outcome"] for r in items[0]["step_up_results"]] == ["passed"]
    assert [f["outcome"] for f in items[0]["feedback"]] == ["confirmed_legit"]


def test_erasure_empties_the_users_decision_log(app_client: Any, make_event: EventFactory) -> None:
    for _ in range(3):
        app_client.post("/v1/decisions", json=make_event(user_id="dave"))
    app_client.post("/v1/decisions", json=make_event(user_id="erin"))
    assert app_client.delete("/v1/users/dave").status_code == 204
    assert app_client.get("/v1/users/dave/timeline").json()["items"] == []
    assert len(app_client.get("/v1/users/erin/timeline").json()["items"]) == 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "forged"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"decision": "maybe"}, "decision"),
        ({"since": "yesterday"}, "since"),
    ],
)
def test_bad_query_parameters_are_a_422_naming_the_field(
    app_client: Any, params: dict[str, Any], field: str
) -> None:
    response = app_client.get("/v1/decisions", params=params)
    assert response.status_code == 422
    assert response.json()["field"] == field


def test_the_query_api_needs_an_admin_key(settings: Settings, api_key: str) -> None:
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/decisions").status_code == 401
        assert client.get("/v1/users/x/timeline").status_code == 401
        decide_only = {"Authorization": f"Bearer {api_key}"}
        assert client.get("/v1/decisions", headers=decide_only).status_code == 403
        assert client.get("/v1/users/x/timeline", headers=decide_only).status_code == 403


def test_decision_log_off_is_said_not_500(
    make_settings: Callable[..., Settings], admin_api_key: str
) -> None:
    settings = make_settings(decision_log="off")
    with TestClient(
        create_app(settings), headers={"Authorization": f"Bearer {admin_api_key}"}
    ) as c:
        response = c.get("/v1/decisions")
    assert response.status_code == 500
    assert "decision log is off" in response.json()["message"]


def test_a_misspelt_filter_is_refused_not_ignored(app_client: Any) -> None:
    response = app_client.get("/v1/decisions", params={"decison": "deny"})
    assert response.status_code == 422
    assert response.json()["field"] == "decison"
