"""A small typed client of the decision service, and a FastAPI guard for protected apps.

``RiskEngineClient`` speaks the HTTP API (sync, httpx). ``require_step_up``
builds a FastAPI dependency for the PROTECTED application's routes: it asks the
engine about the request and answers 401 with the RFC 9470 ``WWW-Authenticate``
hint on ``step_up`` and 403 on ``deny``; those HTTPExceptions belong to the
protected app, not to this service's API.

>>> client = RiskEngineClient("http://127.0.0.1:8000", api_key="rek_...")
>>> client.base_url
'http://127.0.0.1:8000'
>>> client.close()
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from risk_engine.decision import Acr, Decision, Outcome, Reason
from risk_engine.errors import (
    AuthenticationError,
    ConflictError,
    ForbiddenError,
    InvalidEventError,
    NotFoundError,
    ProfileStoreError,
    RiskEngineError,
)
from risk_engine.events import Event

_ERRORS: dict[int, type[RiskEngineError]] = {
    401: AuthenticationError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    422: InvalidEventError,
    503: ProfileStoreError,
}

EventBuilder = Callable[[Request, str], dict[str, Any] | Awaitable[dict[str, Any]]]


class RiskEngineUnavailable(RiskEngineError):
    """The service could not be reached or did not answer in time."""

    status_code = 503
    code = "risk_engine_unavailable"


class RiskEngineClient:
    """Calls the decision service; errors come back as the engine's own error classes."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 2.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> RiskEngineClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise RiskEngineUnavailable(f"risk engine at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                payload = response.json()
            except ValueError:
                payload = {}
            message = payload.get("message") if isinstance(payload, dict) else None
            error = _ERRORS.get(response.status_code, RiskEngineError)
            field = payload.get("field") if isinstance(payload, dict) else None
            raise error(message or f"HTTP {response.status_code} from {path}", field=field)
        return response

    def decide(self, event: dict[str, Any] | Event) -> Decision:
        """POST /v1/decisions."""
        body = (
            event.model_dump(mode="json", exclude_none=True) if isinstance(event, Event) else event
        )
        return Decision.model_validate(self._request("POST", "/v1/decisions", body).json())

    def report_challenge(
        self,
        challenge_id: str,
        passed: bool,
        method: str,
        session_id: str | None,
        acr: Acr | str | None = None,
    ) -> dict[str, Any]:
        """POST /v1/challenges/{id}/result; NotFoundError / ConflictError when refused."""
        body = {
            "passed": passed,
            "method": method,
            "session_id": session_id,
            "acr": Acr(acr).value if acr is not None else None,
        }
        result: dict[str, Any] = self._request(
            "POST", f"/v1/challenges/{segment(challenge_id)}/result", body
        ).json()
        return result

    def feedback(
        self, event_id: str, label: str, *, user_id: str | None = None, note: str | None = None
    ) -> dict[str, Any]:
        """POST /v1/events/{id}/feedback with ``confirmed_fraud`` or ``confirmed_legit``."""
        body = {"label": label, "user_id": user_id, "note": note}
        result: dict[str, Any] = self._request(
            "POST", f"/v1/events/{segment(event_id)}/feedback", body
        ).json()
        return result

    def delete_user(self, user_id: str) -> None:
        """DELETE /v1/users/{id}; NotFoundError when no profile was kept."""
        self._request("DELETE", f"/v1/users/{segment(user_id)}")


def segment(value: str) -> str:
    """``value`` as one URL path segment: every reserved character and every dot escaped.

    An id is a name, never a path: ``a/../victim`` or ``victim?x=1`` must not
    reach another resource. Dots too, since ``..`` as a segment would be
    resolved away by the URL parser (httpx keeps ``%2E``).

    >>> segment("mallory/../victim")
    'mallory%2F%2E%2E%2Fvictim'
    >>> segment("victim2?x=1")
    'victim2%3Fx%3D1'
    """
    return quote(value, safe="").replace(".", "%2E")


def event_from_request(
    request: Request,
    *,
    user_id: str,
    action: str,
    session_id: str | None = None,
    device_id: str | None = None,
    ip: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A contract event for ``request``: address, User-Agent and time filled in.

    ``ip`` defaults to the connection's peer; behind a proxy pass the address
    the proxy reports (and only trust a proxy you run).
    """
    device: dict[str, Any] = {}
    if device_id:
        device["id"] = device_id
    user_agent = request.headers.get("user-agent")
    if user_agent:
        device["user_agent"] = user_agent
    language = request.headers.get("accept-language")
    if language:
        device["language"] = language.split(",")[0].strip()[:64]
    event: dict[str, Any] = {
        "event_id": "e-" + uuid.uuid4().hex,
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "user_id": user_id,
        "action": action,
        "ip": ip or (request.client.host if request.client else "0.0.0.0"),
    }
    if session_id:
        event["session_id"] = session_id
    if device:
        event["device"] = device
    event.update(extra)
    return event


def require_step_up(
    client: RiskEngineClient,
    *,
    action: str,
    event_builder: EventBuilder,
    on_unavailable: Outcome = Outcome.STEP_UP,
) -> Callable[[Request], Awaitable[Decision]]:
    """A FastAPI dependency: allow passes the Decision on, step_up is 401, deny is 403.

    ``event_builder(request, action)`` returns the contract event (sync or async).
    When the engine cannot be reached, ``on_unavailable`` decides (fail safe: step_up).
    """

    async def guard(request: Request) -> Decision:
        built = event_builder(request, action)
        event = await built if isinstance(built, Awaitable) else built
        try:
            decision = await run_in_threadpool(client.decide, event)
        except RiskEngineUnavailable:
            decision = _fallback(str(event.get("event_id", "")), on_unavailable)
        if decision.decision is Outcome.DENY:
            raise HTTPException(
                status_code=403, detail={"error": "denied", "reasons": _codes(decision)}
            )
        if decision.decision is Outcome.STEP_UP:
            hint = (
                decision.challenge.www_authenticate
                if decision.challenge is not None
                else _hint(decision.required_acr or Acr.MFA, decision.max_age or 300)
            )
            raise HTTPException(
                status_code=401,
                detail={
                    "error": "step_up_required",
                    "challenge_id": decision.challenge.id if decision.challenge else None,
                    "required_acr": (decision.required_acr or Acr.MFA).value,
                    "max_age": decision.max_age,
                    "reasons": _codes(decision),
                },
                headers={"WWW-Authenticate": hint},
            )
        return decision

    return guard


def _fallback(event_id: str, outcome: Outcome) -> Decision:
    """The decision to act on when the engine cannot be asked."""
    stepping = outcome is Outcome.STEP_UP
    return Decision(
        event_id=event_id,
        score=0.0 if outcome is Outcome.ALLOW else 1.0,
        decision=outcome,
        reasons=[Reason(code="degraded", detail="the risk engine is unreachable")],
        required_acr=Acr.MFA if stepping else None,
        max_age=300 if stepping else None,
        model_version="unavailable",
        degraded=True,
    )


def _codes(decision: Decision) -> list[str]:
    return [reason.code for reason in decision.reasons]


def _hint(acr: Acr, max_age: int) -> str:
    """The RFC 9470 challenge when the engine issued none (degraded or unreachable)."""
    return (
        'Bearer error="insufficient_user_authentication", '
        f'error_description="step-up required", acr_values="{acr.value}", max_age={max_age}'
    )
