"""The step-up flow: history, a risky event, its challenge, the result, what follows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from risk_engine.api import create_app
from risk_engine.assembly import build_engine
from risk_engine.config import Settings
from risk_engine.errors import ProfileStoreError
from risk_engine.geo import GeoLocator
from risk_engine.policy import load_policy, save_policy
from risk_engine.profiles.sqlite import SQLiteStore

EventFactory = Callable[..., dict[str, Any]]
OSLO, SYDNEY = "84.208.0.1", "203.2.218.214"
PHONE = {
    "id": "d-attacker",
    "user_agent": "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/123.0 Mobile Safari/537.36",
    "platform": "Linux armv8l",
    "timezone": "Australia/Sydney",
    "language": "en-AU",
    "screen": "412x915",
}


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_the_places_are_where_the_test_needs_them() -> None:
    from ipaddress import ip_address

    geo = GeoLocator()
    assert geo.lookup(ip_address(OSLO)).country == "NO"
    assert geo.lookup(ip_address(SYDNEY)).country == "AU"


@pytest.fixture
def risky_policy(tmp_path: Path) -> Path:
    """The bundled policy, except that nothing is denied below a score of 1.0.

    The impossible-travel floor then makes the risky login a step_up whatever the
    model scores it, which is the flow under test here.
    """
    policy = load_policy()
    for cls in policy.classes.values():
        cls.deny = 1.0
    save_policy(policy, tmp_path / "policy.toml")
    return tmp_path / "policy.toml"


@pytest.fixture
def client(
    make_settings: Callable[..., Settings], risky_policy: Path, api_key: str
) -> Iterator[TestClient]:
    """The app with ``risky_policy``."""
    app = create_app(make_settings(policy_path=risky_policy))
    with TestClient(app, headers={"Authorization": f"Bearer {api_key}"}) as test_client:
        yield test_client


@pytest.fixture
def risky(
    client: TestClient,
    make_event: EventFactory,
    make_history: Callable[..., list[dict[str, Any]]],
) -> Callable[[str, str], tuple[dict[str, Any], dict[str, Any]]]:
    """``risky(user_id, session_id)``: a week in Oslo, then a login from Sydney minutes later."""

    def run(user_id: str, session_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        now = datetime.now(UTC)
        for event in make_history(user_id, now=now):
            assert client.post("/v1/decisions", json=event).status_code == 200
        client.post(
            "/v1/decisions",
            json=make_event(user_id=user_id, timestamp=stamp(now - timedelta(minutes=20))),
        )
        event = make_event(
            user_id=user_id,
            action="login",
            ip=SYDNEY,
            session_id=session_id,
            device=PHONE,
            timestamp=stamp(now - timedelta(minutes=2)),
        )
        response = client.post("/v1/decisions", json=event)
        assert response.status_code == 200, response.text
        return event, {**response.json(), "_headers": dict(response.headers)}

    return run


def test_impossible_travel_steps_up_with_a_challenge(
    risky: Callable[[str, str], tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    _, decision = risky("u-traveller", "s-syd")
    assert decision["decision"] == "step_up"
    assert "impossible_travel" in {r["code"] for r in decision["reasons"]}
    assert decision["required_acr"] in {"mfa", "phr"} and decision["max_age"] > 0
    challenge = decision["challenge"]
    assert challenge["id"].startswith("c-")
    hint = decision["_headers"]["www-authenticate"]
    assert hint == challenge["www_authenticate"]
    assert hint.startswith('Bearer error="insufficient_user_authentication"')
    assert f'acr_values="{decision["required_acr"]}"' in hint


def test_a_passed_challenge_covers_the_next_action_in_that_session(
    client: TestClient,
    make_event: EventFactory,
    risky: Callable[[str, str], tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    event, decision = risky("u-stepper", "s-syd")
    assert decision["decision"] == "step_up"
    challenge_id = decision["challenge"]["id"]
    result = {"passed": True, "method": "totp", "session_id": "s-syd"}
    response = client.post(f"/v1/challenges/{challenge_id}/result", json=result)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "challenge_id": challenge_id,
        "event_id": event["event_id"],
        "passed": True,
        "satisfied": True,
        "acr": "mfa",
    }
    # The next action of another class than money (a money action needs a step-up of its
    # own, bound to its amount and payee: see the dynamic-linking tests).
    follow_up = make_event(
        user_id="u-stepper",
        action="view_account",
        ip=SYDNEY,
        session_id="s-syd",
        device=PHONE,
        timestamp=stamp(datetime.now(UTC)),
    )
    after = client.post("/v1/decisions", json=follow_up).json()
    # Allowed: by the session's fresh assurance, or because the pass taught place and device.
    assert after["decision"] == "allow", repr(after)
    # The same result again is a replay.
    replay = client.post(f"/v1/challenges/{challenge_id}/result", json=result)
    assert replay.status_code == 409
    assert replay.json()["error"] == "conflict"


def test_a_result_for_another_session_is_refused(
    client: TestClient,
    risky: Callable[[str, str], tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    _, decision = risky("u-hijacked", "s-victim")
    challenge_id = decision["challenge"]["id"]
    foreign = {"passed": True, "method": "webauthn", "session_id": "s-attacker"}
    response = client.post(f"/v1/challenges/{challenge_id}/result", json=foreign)
    assert response.status_code == 409
    assert response.json()["field"] == "session_id"
    # Refused without being used: the right session can still complete it.
    own = {"passed": True, "method": "webauthn", "session_id": "s-victim"}
    response = client.post(f"/v1/challenges/{challenge_id}/result", json=own)
    assert response.status_code == 200
    assert response.json()["acr"] == "phr"


def test_a_failed_challenge_is_not_satisfied(
    client: TestClient,
    risky: Callable[[str, str], tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    _, decision = risky("u-failer", "s-f")
    challenge_id = decision["challenge"]["id"]
    result = {"passed": False, "method": "sms", "session_id": "s-f"}
    body = client.post(f"/v1/challenges/{challenge_id}/result", json=result).json()
    assert body["passed"] is False and body["satisfied"] is False


def test_an_unknown_challenge_is_404(client: TestClient) -> None:
    result = {"passed": True, "method": "totp", "session_id": None}
    response = client.post("/v1/challenges/c-nope/result", json=result)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"method": "totp"}, "passed"),
        ({"passed": "yes", "method": "totp"}, "passed"),
        ({"passed": True, "method": "carrier-pigeon"}, "method"),
        ({"passed": True, "method": "totp", "acr": "aal3"}, "acr"),
        ({"passed": True, "method": "totp", "extra": 1}, "extra"),
    ],
)
def test_a_malformed_result_is_422(client: TestClient, body: dict[str, Any], field: str) -> None:
    response = client.post("/v1/challenges/c-x/result", json=body)
    assert response.status_code == 422
    assert response.json()["field"] == field
    assert response.json()["error"] == "invalid_request"


class ChallengesUnsaved(SQLiteStore):
    """A store whose challenge table fails, as Redis dropping between two calls would."""

    def save_challenge(self, challenge_id: str, record: bytes, ttl_s: float, now: float) -> None:
        raise ProfileStoreError("challenge store went away")


def test_a_challenge_that_cannot_be_saved_degrades_not_fails(
    make_settings: Callable[..., Settings],
    make_event: EventFactory,
    tmp_path: Path,
    api_key: str,
) -> None:
    policy = load_policy()
    for cls in policy.classes.values():
        cls.step_up, cls.deny = 1e-9, 1.0  # every event steps up
    save_policy(policy, tmp_path / "always.toml")
    settings = make_settings(policy_path=tmp_path / "always.toml")
    engine = build_engine(settings, store=ChallengesUnsaved(tmp_path / "flaky.db"))
    app = create_app(settings, engine=engine)
    with TestClient(app, headers={"Authorization": f"Bearer {api_key}"}) as c:
        response = c.post("/v1/decisions", json=make_event())
    engine.store.close()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["decision"] == "step_up" and body["degraded"] is True
    assert body["reasons"][0]["code"] == "degraded" and "challenge" not in body
    assert "www-authenticate" not in response.headers


def test_an_unanswered_step_up_is_not_lifted_by_retrying_the_login(
    make_settings: Callable[..., Settings], make_event: EventFactory, api_key: str, tmp_path: Path
) -> None:
    """Defect 1 end to end: a new user's challenged login, retried 5 s later, stays challenged.

    The bundled policy with a login line at 0.9: what is under test is the retry, not
    where the shipped policy draws that line (a cold start scores about 0.95).
    """
    policy = load_policy()
    policy.classes["login"].step_up = 0.9
    save_policy(policy, tmp_path / "policy.toml")
    now = datetime.now(UTC)
    stranger = {
        "id": "d-2",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        "timezone": "Asia/Tokyo",
        "language": "ja",
    }
    with TestClient(
        create_app(make_settings(policy_path=tmp_path / "policy.toml")),
        headers={"Authorization": f"Bearer {api_key}"},
    ) as client:
        # Someone else signed in from the address a minute ago: the new user's login is odd.
        other = make_event(
            ip="1.2.3.4", session_id="s-other", timestamp=stamp(now - timedelta(minutes=1))
        )
        assert client.post("/v1/decisions", json=other).status_code == 200
        login = make_event(
            user_id="u-newcomer",
            ip="1.2.3.4",
            session_id="s-new",
            device=stranger,
            timestamp=stamp(now - timedelta(seconds=10)),
        )
        first = client.post("/v1/decisions", json=login).json()
        assert first["decision"] == "step_up", first
        retry = {
            **login,
            "event_id": login["event_id"] + "-retry",
            "timestamp": stamp(now - timedelta(seconds=5)),
        }
        again = client.post("/v1/decisions", json=retry).json()
    assert again["decision"] in {"step_up", "deny"}, again


def test_a_session_less_challenge_refuses_a_result_naming_a_session(
    make_settings: Callable[..., Settings], make_event: EventFactory, tmp_path: Path, api_key: str
) -> None:
    policy = load_policy()
    for cls in policy.classes.values():
        cls.step_up, cls.deny = 1e-9, 1.0  # every event steps up
    save_policy(policy, tmp_path / "always.toml")
    app = create_app(make_settings(policy_path=tmp_path / "always.toml"))
    with TestClient(app, headers={"Authorization": f"Bearer {api_key}"}) as client:
        event = make_event()
        del event["session_id"]
        challenge_id = client.post("/v1/decisions", json=event).json()["challenge"]["id"]
        foreign = {"passed": True, "method": "totp", "session_id": "s-attacker"}
        refused = client.post(f"/v1/challenges/{challenge_id}/result", json=foreign)
        assert refused.status_code == 409
        assert refused.json()["field"] == "session_id"
        own = {"passed": True, "method": "totp"}
        assert client.post(f"/v1/challenges/{challenge_id}/result", json=own).status_code == 200
