"""The routes: /v1 (API key required) and the open operational ones.

Each endpoint is one call into the Service plus its HTTP shape; the
``responses=`` tables declare every error status, so the OpenAPI document is true.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from prometheus_client import CONTENT_TYPE_LATEST

from risk_engine.api.deps import ApiKeyDep, ServiceDep
from risk_engine.api.responses import JSONBody
from risk_engine.api.schemas import (
    ChallengeResultIn,
    ChallengeResultOut,
    ErrorBody,
    FeedbackIn,
    FeedbackOut,
    Health,
    ModelInfo,
    Readiness,
)
from risk_engine.decision import Decision
from risk_engine.events import Event

_ERRORS: dict[int, str] = {
    401: "missing or invalid API key",
    404: "no such challenge, event or user",
    409: "challenge already used, or reported for another session",
    413: "request body too large",
    422: "malformed request: the body names the field",
    500: "the server cannot use its configuration or files",
    503: "the profile store is unavailable",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entries for these error statuses."""
    return {code: {"model": ErrorBody, "description": _ERRORS[code]} for code in codes}


EventId = Annotated[str, Path(min_length=1, max_length=128)]
ChallengeId = Annotated[str, Path(min_length=1, max_length=128)]
UserId = Annotated[str, Path(min_length=1, max_length=256)]

v1 = APIRouter(prefix="/v1", dependencies=[ApiKeyDep])
ops = APIRouter()


@v1.post(
    "/decisions",
    response_model=Decision,
    summary="Score one event and decide: allow, step_up or deny",
    responses={
        200: {
            "description": "the decision; with step_up, a challenge and an RFC 9470 "
            "WWW-Authenticate hint",
            "headers": {
                "WWW-Authenticate": {
                    "description": "with step_up: the hint to forward to the client",
                    "schema": {"type": "string"},
                }
            },
        },
        **errors(401, 413, 422),
    },
)
def decide(event: Event, service: ServiceDep) -> Response:
    # The app serves this path with api/endpoint.py (same answers, less overhead); this
    # route declares it in the OpenAPI document and answers where that is not installed.
    content, headers = service.render(service.decide(event))
    return Response(content, media_type="application/json", headers=dict(headers))


@v1.post(
    "/challenges/{challenge_id}/result",
    response_model=ChallengeResultOut,
    summary="Report the result of a step-up challenge (single use, session-bound)",
    responses=errors(401, 404, 409, 413, 422, 503),
)
def challenge_result(
    challenge_id: ChallengeId, body: ChallengeResultIn, service: ServiceDep
) -> ChallengeResultOut:
    return service.complete_challenge(challenge_id, body)


@v1.post(
    "/events/{event_id}/feedback",
    response_model=FeedbackOut,
    summary="Label a decided event as confirmed fraud or legitimate (training feedback)",
    description="404 for an event the service did not decide (or no longer keeps); 409 for"
    " another label than the event has already; the same label again changes nothing.",
    responses=errors(401, 404, 409, 413, 422, 500, 503),
)
def feedback(event_id: EventId, body: FeedbackIn, service: ServiceDep) -> FeedbackOut:
    return service.feedback(event_id, body)


@v1.delete(
    "/users/{user_id}",
    status_code=204,
    summary="Erase a user: profile, burst entries, pending challenges, decided events",
    description="The user's personal fields in the audit and feedback logs were sealed under"
    " a key kept in the profile: erasure destroys it, and with it what they said.",
    responses=errors(401, 404, 422, 503),
)
def erase_user(user_id: UserId, service: ServiceDep) -> Response:
    service.erase(user_id)
    return Response(status_code=204)


@v1.get(
    "/model",
    response_model=ModelInfo,
    summary="The live model, its policy thresholds, and the shadow pair",
    responses=errors(401, 500),
)
def model(service: ServiceDep) -> ModelInfo:
    return service.model_info()


@v1.post(
    "/admin/reload",
    response_model=ModelInfo,
    summary="Reload model and policy from their files; a bad file keeps the running one",
    responses=errors(401, 500),
)
def reload(service: ServiceDep) -> ModelInfo:
    return service.reload()


@ops.get("/healthz", response_model=Health, summary="Alive: answers without dependencies")
def healthz() -> Health:
    return Health()


@ops.get(
    "/readyz",
    response_model=Readiness,
    summary="Ready: store, GeoIP and model usable",
    responses={503: {"model": Readiness, "description": "a dependency failed (named)"}},
)
def readyz(service: ServiceDep) -> Response:
    readiness = service.readiness()
    status = 200 if readiness.status == "ready" else 503
    return JSONBody(readiness.model_dump(), status_code=status)


@ops.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
def metrics(service: ServiceDep) -> Response:
    return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
