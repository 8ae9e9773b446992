"""The routes: /v1 (an API key of the scope each needs), metrics, and the open probes.

Each endpoint is one call into the Service plus its HTTP shape; the
``responses=`` tables declare every error status, so the OpenAPI document is true.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from risk_engine.api.auth import granted_scopes
from risk_engine.api.deps import (
    AdminKeyDep,
    BearerDep,
    DecideKeyDep,
    MetricsKeyDep,
    ServiceDep,
    SettingsDep,
    bearer_key,
)
from risk_engine.api.responses import JSONBody
from risk_engine.api.schemas import (
    ChallengeResultIn,
    ChallengeResultOut,
    ErrorBody,
    FeedbackIn,
    FeedbackOut,
    Health,
    LogPage,
    ModelInfo,
    Readiness,
)
from risk_engine.decision import Decision, Outcome
from risk_engine.decision_log import DecisionFilter
from risk_engine.decision_log.entries import Cursor
from risk_engine.errors import InvalidEventError
from risk_engine.events import Event
from risk_engine.scopes import Scope

_ERRORS: dict[int, str] = {
    401: "missing or invalid API key",
    403: "the API key lacks the scope this call needs",
    404: "no such challenge, event or user",
    408: "the request body did not arrive in time (RISK_ENGINE_BODY_TIMEOUT_S)",
    409: "challenge already used, or reported for another session",
    413: "request body too large",
    422: "malformed request (timestamp out of range or too far ahead of the server clock,"
    " JSON nested too deep, ...): the body names the field",
    500: "the server cannot use its configuration or files",
    503: "the profile store is unavailable",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entries for these error statuses."""
    return {code: {"model": ErrorBody, "description": _ERRORS[code]} for code in codes}


EventId = Annotated[str, Path(min_length=1, max_length=128)]
ChallengeId = Annotated[str, Path(min_length=1, max_length=128)]
UserId = Annotated[str, Path(min_length=1, max_length=256)]

v1 = APIRouter(prefix="/v1")
ops = APIRouter()


@v1.post(
    "/decisions",
    response_model=Decision,
    summary="Score one event and decide: allow, step_up or deny (scope decide)",
    dependencies=[DecideKeyDep],
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
        **errors(401, 403, 408, 413, 422),
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
    summary="Report the result of a step-up challenge (single use, session-bound; scope decide)",
    dependencies=[DecideKeyDep],
    responses=errors(401, 403, 404, 408, 409, 413, 422, 503),
)
def challenge_result(
    challenge_id: ChallengeId, body: ChallengeResultIn, service: ServiceDep
) -> ChallengeResultOut:
    return service.complete_challenge(challenge_id, body)


@v1.post(
    "/events/{event_id}/feedback",
    response_model=FeedbackOut,
    summary="Label a decided event as confirmed fraud or legitimate (scope decide)",
    description="404 for an event the service did not decide (or no longer keeps); 409 for"
    " another label than the event has already; the same label again changes nothing.",
    dependencies=[DecideKeyDep],
    responses=errors(401, 403, 404, 408, 409, 413, 422, 500, 503),
)
def feedback(event_id: EventId, body: FeedbackIn, service: ServiceDep) -> FeedbackOut:
    return service.feedback(event_id, body)


@v1.delete(
    "/users/{user_id}",
    status_code=204,
    summary="Erase a user: profile, bursts, pending challenges, decided events (scope admin)",
    description="The user's personal fields in the audit and feedback logs were sealed under"
    " a key kept in the profile: erasure destroys it, and with it what they said. The"
    " user's decision log rows are deleted.",
    dependencies=[AdminKeyDep],
    responses=errors(401, 403, 404, 422, 503),
)
def erase_user(user_id: UserId, service: ServiceDep) -> Response:
    service.erase(user_id)
    return Response(status_code=204)


@v1.get(
    "/model",
    response_model=ModelInfo,
    summary="The live model, its policy thresholds, and the shadow pair (scope admin)",
    dependencies=[AdminKeyDep],
    responses=errors(401, 403, 500),
)
def model(service: ServiceDep) -> ModelInfo:
    return service.model_info()


@v1.post(
    "/admin/reload",
    response_model=ModelInfo,
    summary="Reload model and policy from their files; a bad file keeps the running one"
    " (scope admin)",
    dependencies=[AdminKeyDep],
    responses=errors(401, 403, 500),
)
def reload(service: ServiceDep) -> ModelInfo:
    return service.reload()


def only_known_query(*names: str) -> Any:
    """A dependency refusing query parameters outside ``names``: a misspelt filter
    (``decison=deny``) must not silently return everything."""
    allowed = frozenset(names)

    def check(request: Request) -> None:
        for name in request.query_params:
            if name not in allowed:
                raise InvalidEventError(
                    f"unknown query parameter {name!r}; known: {', '.join(sorted(allowed))}",
                    field=name,
                )

    return Depends(check)


Limit = Annotated[int, Query(ge=1, le=500, description="rows per page")]
CursorParam = Annotated[
    str | None, Query(max_length=512, description="next_cursor of the previous page")
]


@v1.get(
    "/decisions",
    response_model=LogPage,
    summary="Query the decision log: filter by user, decision, class, reason, model and time",
    responses=errors(401, 403, 422, 500, 503),
    dependencies=[
        AdminKeyDep,
        only_known_query(
            "user_id",
            "decision",
            "action_class",
            "reason",
            "model_version",
            "since",
            "until",
            "limit",
            "cursor",
        ),
    ],
)
def query_decisions(
    service: ServiceDep,
    user_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    decision: Outcome | None = None,
    action_class: Annotated[str | None, Query(max_length=64)] = None,
    reason: Annotated[str | None, Query(max_length=64, description="a reason code")] = None,
    model_version: Annotated[str | None, Query(max_length=128)] = None,
    since: Annotated[datetime | None, Query(description="RFC 3339, inclusive")] = None,
    until: Annotated[datetime | None, Query(description="RFC 3339, exclusive")] = None,
    limit: Limit = 50,
    cursor: CursorParam = None,
) -> LogPage:
    where = DecisionFilter(
        user_id=user_id,
        decision=decision.value if decision else None,
        action_class=action_class,
        reason=reason,
        model_version=model_version,
        since=since.timestamp() if since else None,
        until=until.timestamp() if until else None,
    )
    page = service.decision_log_or_fail().log.decisions(
        where, limit=limit, cursor=Cursor.decode(cursor) if cursor else None
    )
    return LogPage(items=page.items, next_cursor=page.next_cursor)


@v1.get(
    "/users/{user_id}/timeline",
    response_model=LogPage,
    summary="A user's decisions newest first, with place, device, reasons, step-ups, feedback",
    responses=errors(401, 403, 422, 500, 503),
    dependencies=[AdminKeyDep, only_known_query("limit", "cursor")],
)
def timeline(
    user_id: UserId, service: ServiceDep, limit: Limit = 50, cursor: CursorParam = None
) -> LogPage:
    page = service.decision_log_or_fail().log.timeline(
        user_id, limit=limit, cursor=Cursor.decode(cursor) if cursor else None
    )
    return LogPage(items=page.items, next_cursor=page.next_cursor)


@ops.get("/healthz", response_model=Health, summary="Alive: answers without dependencies")
def healthz() -> Health:
    return Health()


@ops.get(
    "/readyz",
    response_model=Readiness,
    summary="Ready: store, GeoIP and model usable; each check ok or failed (an admin key: why)",
    responses={503: {"model": Readiness, "description": "a dependency failed"}},
    # The key is optional here (probes send none): {} is the no-key alternative.
    openapi_extra={"security": [{}]},
)
def readyz(service: ServiceDep, settings: SettingsDep, credentials: BearerDep) -> Response:
    # Probes need no key; what failed and why (addresses, errors) is for operators only.
    detailed = Scope.ADMIN in granted_scopes(settings, bearer_key(credentials))
    readiness = service.readiness(detailed=detailed)
    status = 200 if readiness.status == "ready" else 503
    return JSONBody(readiness.model_dump(), status_code=status)


@ops.get(
    "/metrics",
    summary="Prometheus metrics (scope metrics or admin)",
    response_class=Response,
    dependencies=[MetricsKeyDep],
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
        **errors(401, 403),
    },
)
def metrics(service: ServiceDep) -> Response:
    return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
