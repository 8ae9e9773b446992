"""The typed client and the example protected app, against a real engine server."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi.testclient import TestClient

from risk_engine.client import RiskEngineClient, RiskEngineUnavailable
from risk_engine.decision import Outcome
from risk_engine.errors import (
    AuthenticationError,
    ConflictError,
    ForbiddenError,
    InvalidEventError,
)
from risk_engine.events import Event
from risk_engine.policy import load_policy, save_policy

EventFactory = Callable[..., dict[str, Any]]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "protected_app.py"
SYDNEY = "203.2.218.214"


def load_example() -> ModuleType:
    """examples/ is no package: load the file as the module a reader would run."""
    spec = importlib.util.spec_from_file_location("protected_app", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first, as `import` would, so pydantic can resolve the module's annotations.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def engine_url(serve: Callable[..., Any], tmp_path: Path) -> str:
    """A real engine whose policy denies every account view (to see the 403 path).

    Money movements are denied only at a score of exactly 1.0, so that the risky
    transfer below meets the impossible-travel floor (step_up) whatever the model.
    """
    policy = load_policy()
    policy.classes["read"].step_up, policy.classes["read"].deny = 0.0001, 0.0002
    policy.classes["money"].deny = 1.0
    save_policy(policy, tmp_path / "policy.toml")
    server = serve(RISK_ENGINE_POLICY_PATH=str(tmp_path / "policy.toml"))
    return str(server.base_url)


def test_the_client_speaks_the_api(
    engine_url: str, api_key: str, admin_api_key: str, make_event: EventFactory
) -> None:
    with RiskEngineClient(engine_url, api_key=api_key) as client:
        decision = client.decide(make_event(action="login"))
        assert decision.decision in set(Outcome) and 0 <= decision.score <= 1
        typed = client.decide(Event.model_validate(make_event(action="login")))
        assert typed.model_version == decision.model_version
        with pytest.raises(InvalidEventError) as bad:
            client.decide(make_event(ip="nowhere"))
        assert bad.value.field == "ip"
        feedback = client.feedback(decision.event_id, "confirmed_legit", note="ok")
        assert feedback["label"] == "confirmed_legit"
        client.decide(make_event(user_id="u-gone"))
        with pytest.raises(ForbiddenError):  # erasure is the operator's (scope admin)
            client.delete_user("u-gone")
    with RiskEngineClient(engine_url, api_key=admin_api_key) as admin:
        admin.delete_user("u-gone")
    with (
        RiskEngineClient(engine_url, api_key="wrong") as client,
        pytest.raises(AuthenticationError),
    ):
        client.decide(make_event())
    with (
        RiskEngineClient("http://127.0.0.1:9", timeout=0.5) as client,
        pytest.raises(RiskEngineUnavailable),
    ):
        client.decide(make_event())


def test_the_example_app_steps_up_a_risky_transfer(
    engine_url: str,
    api_key: str,
    make_event: EventFactory,
    make_history: Callable[..., list[dict[str, Any]]],
) -> None:
    example = load_example()
    user = "u-example"
    with RiskEngineClient(engine_url, api_key=api_key) as client:
        now = datetime.now(UTC)
        for event in make_history(user, now=now):
            client.decide(event)
        recent = (now - timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
        client.decide(make_event(user_id=user, timestamp=recent))  # in Oslo, just now
        app = example.create_app(client)
        with TestClient(app) as bank:
            identity = {"X-User-Id": user, "X-Session-Id": "s-bank", "X-Device-Id": "d-new"}
            risky = bank.post(
                "/transfer",
                json={"amount": 120.0, "currency": "NOK", "payee": "NO9386011117947"},
                headers={**identity, "X-Forwarded-For": SYDNEY},
            )
            assert risky.status_code == 401, risky.text
            hint = risky.headers["www-authenticate"]
            assert hint.startswith('Bearer error="insufficient_user_authentication"')
            assert "acr_values=" in hint and "max_age=" in hint
            challenge_id = risky.json()["detail"]["challenge_id"]
            assert challenge_id

            passed = bank.post(f"/step-up/{challenge_id}", json={"passed": True}, headers=identity)
            assert passed.status_code == 200 and passed.json()["satisfied"] is True
            replayed = bank.post(
                f"/step-up/{challenge_id}", json={"passed": True}, headers=identity
            )
            assert replayed.status_code == 409

            denied = bank.get("/account", headers={**identity, "X-Forwarded-For": SYDNEY})
            assert denied.status_code == 403
        with pytest.raises(ConflictError):
            client.report_challenge(challenge_id, True, "totp", "s-bank")


def test_an_unreachable_engine_fails_safe(make_event: EventFactory) -> None:
    example = load_example()
    with RiskEngineClient("http://127.0.0.1:9", timeout=0.5) as client:
        app = example.create_app(client)
        with TestClient(app) as bank:
            response = bank.get(
                "/account", headers={"X-User-Id": "u", "X-Forwarded-For": "84.208.0.1"}
            )
    assert response.status_code == 401
    assert "insufficient_user_authentication" in response.headers["www-authenticate"]
