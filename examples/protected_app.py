"""An application protected by the risk engine: a tiny bank with an account view and transfers.

Each sensitive route asks the engine first (``require_step_up``): allow passes,
step_up answers 401 with the RFC 9470 ``WWW-Authenticate`` hint (the client runs
the step-up, the app reports its result with ``report_challenge``), deny is 403.

Run it beside a running engine::

    RISK_ENGINE_URL=http://127.0.0.1:8000 RISK_ENGINE_API_KEY=rek_... \\
        uvicorn --factory examples.protected_app:create_app_from_env --port 9000

Who the user is, their session and device come from headers here (X-User-Id,
X-Session-Id, X-Device-Id); a real application takes them from its own login
session and device cookie. X-Forwarded-For is trusted only because this demo
sits behind a proxy you run.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from risk_engine.client import RiskEngineClient, event_from_request, require_step_up
from risk_engine.decision import Decision
from risk_engine.errors import RiskEngineError

router = APIRouter()


class Transfer(BaseModel):
    """A money movement the user asks for."""

    amount: Annotated[float, Field(gt=0)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "EUR"
    payee: Annotated[str, Field(min_length=1, max_length=64)]


class StepUpResult(BaseModel):
    """What the front end reports after the user passed (or failed) the step-up."""

    passed: bool
    method: str = "totp"


async def build_event(request: Request, action: str) -> dict[str, Any]:
    """The contract event for this request (identity from the demo headers)."""
    user_id = request.headers.get("x-user-id")
    if not user_id:
        raise HTTPException(status_code=401, detail="log in first (X-User-Id)")
    forwarded = request.headers.get("x-forwarded-for", "").split(",")[0].strip()
    extra: dict[str, Any] = {}
    if action == "transfer":
        transfer = Transfer.model_validate_json(await request.body())
        extra = {"amount": transfer.amount, "currency": transfer.currency}
        extra["payee"] = transfer.payee
    return event_from_request(
        request,
        user_id=user_id,
        action=action,
        session_id=request.headers.get("x-session-id"),
        device_id=request.headers.get("x-device-id"),
        ip=forwarded or None,
        **extra,
    )


async def guard_view(request: Request) -> Decision:
    """The engine's verdict on viewing the account."""
    guard = request.app.state.guards["view_account"]
    decision: Decision = await guard(request)
    return decision


async def guard_transfer(request: Request) -> Decision:
    """The engine's verdict on this transfer."""
    guard = request.app.state.guards["transfer"]
    decision: Decision = await guard(request)
    return decision


@router.get("/account")
async def account(decision: Annotated[Decision, Depends(guard_view)]) -> dict[str, Any]:
    return {"balance": 1234.5, "currency": "EUR", "risk": decision.score}


@router.post("/transfer")
async def transfer(
    body: Transfer, decision: Annotated[Decision, Depends(guard_transfer)]
) -> dict[str, Any]:
    return {"status": "sent", "amount": body.amount, "payee": body.payee, "risk": decision.score}


@router.post("/step-up/{challenge_id}")
def step_up_done(challenge_id: str, body: StepUpResult, request: Request) -> dict[str, Any]:
    """Forward the step-up result to the engine, bound to this session."""
    client: RiskEngineClient = request.app.state.risk_engine
    try:
        return client.report_challenge(
            challenge_id, body.passed, body.method, request.headers.get("x-session-id")
        )
    except RiskEngineError as exc:
        raise HTTPException(status_code=exc.status_code, detail=exc.message) from exc


def create_app(client: RiskEngineClient) -> FastAPI:
    """The protected app, asking ``client``'s engine before each sensitive action."""
    app = FastAPI(title="protected bank (risk-engine example)")
    app.state.risk_engine = client
    app.state.guards = {
        action: require_step_up(client, action=action, event_builder=build_event)
        for action in ("view_account", "transfer")
    }
    app.include_router(router)
    return app


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory``: the engine from RISK_ENGINE_URL and RISK_ENGINE_API_KEY."""
    client = RiskEngineClient(
        os.environ.get("RISK_ENGINE_URL", "http://127.0.0.1:8000"),
        api_key=os.environ.get("RISK_ENGINE_API_KEY"),
    )
    return create_app(client)
