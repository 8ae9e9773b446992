"""The console's pages: sign-in, overview, decisions, a user, and the operator's actions.

Server-rendered HTML (Jinja2, autoescaped), no script at all, assets served by
the app itself; a Content-Security-Policy of 'self' holds the pages to that.
Every page but sign-in needs a signed-in admin key (or redirects there); every
form carries the session's CSRF token and posts with SameSite=Strict cookies.
"""

from __future__ import annotations

import hashlib
import hmac
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from risk_engine.api.auth import use_caller
from risk_engine.api.deps import ServiceDep
from risk_engine.api.schemas import FeedbackIn, FeedbackLabel
from risk_engine.api.service import Service
from risk_engine.console import charts
from risk_engine.console.session import (
    COOKIE,
    LIFETIME_S,
    ConsoleSession,
    new_session,
    seal,
    unseal,
)
from risk_engine.decision_log import DecisionFilter
from risk_engine.decision_log.entries import Cursor
from risk_engine.errors import AuthenticationError, RiskEngineError
from risk_engine.scopes import Scope

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
STATIC_PATH = "/console/static"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
RANGES = {"24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}

console = APIRouter(prefix="/console", include_in_schema=False)


class SignInRequired(Exception):
    """Raised by a page whose request has no valid session: answered with a redirect."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def session_key(service: Service) -> bytes:
    return service.engine.hasher.derive("console-session")


def current_session(request: Request, service: Service) -> ConsoleSession:
    """The signed-in session, or SignInRequired; a key removed since signs the session out."""
    value = request.cookies.get(COOKIE)
    session = unseal(value, session_key(service)) if value else None
    if session is None or not service.key_allowed(session.key_sha256, Scope.ADMIN):
        raise SignInRequired(request.url.path)
    # The operator's actions are audited under the key that signed in.
    use_caller(session.key_id)
    return session


def check_csrf(session: ConsoleSession, token: str) -> None:
    if not hmac.compare_digest(session.csrf, token):
        raise AuthenticationError("the form is stale or forged: reload the page", field="csrf")


def page(
    request: Request, name: str, context: dict[str, Any], *, status_code: int = 200
) -> HTMLResponse:
    response = TEMPLATES.TemplateResponse(
        request, name, {"static": STATIC_PATH, **context}, status_code=status_code
    )
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def local_path(path: str | None) -> str:
    """Only console paths are followed after sign-in (no open redirect)."""
    if path and path.startswith("/console/") and not path.startswith("//"):
        return path
    return "/console/overview"


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _parse_time(value: str | None, field: str) -> float | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        from risk_engine.errors import InvalidEventError

        raise InvalidEventError(f"{field} is not a date or time: {value!r}", field=field) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


# -- sign-in ------------------------------------------------------------------------------


@console.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/console/overview", status_code=303)


@console.get("/sign-in")
def sign_in_form(request: Request, next: str | None = None) -> HTMLResponse:
    return page(request, "sign_in.html", {"next": local_path(next), "error": None})


@console.post("/sign-in")
def sign_in(
    request: Request,
    service: ServiceDep,
    api_key: Annotated[str, Form(max_length=512)] = "",
    next: Annotated[str, Form(max_length=2048)] = "",
) -> Response:
    digest = hashlib.sha256(api_key.encode()).hexdigest()
    if not api_key or not service.key_allowed(digest, Scope.ADMIN):
        service.note_console("sign_in_refused", None)
        return page(
            request,
            "sign_in.html",
            {"next": local_path(next), "error": "That key is not an admin key of this service."},
            status_code=401,
        )
    session = new_session(digest)
    service.note_console("sign_in", session.key_id)
    response = RedirectResponse(local_path(next), status_code=303)
    response.set_cookie(
        COOKIE,
        seal(session, session_key(service)),
        max_age=LIFETIME_S,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@console.post("/sign-out")
def sign_out(
    request: Request, service: ServiceDep, csrf: Annotated[str, Form(max_length=128)] = ""
) -> RedirectResponse:
    session = current_session(request, service)
    check_csrf(session, csrf)
    service.note_console("sign_out", session.key_id)
    response = RedirectResponse("/console/sign-in", status_code=303)
    response.delete_cookie(COOKIE, path="/console")
    return response


# -- pages --------------------------------------------------------------------------------


@console.get("/overview")
def overview(
    request: Request, service: ServiceDep, period: Annotated[str, Query(alias="range")] = "24h"
) -> HTMLResponse:
    session = current_session(request, service)
    period = period if period in RANGES else "24h"
    span = RANGES[period]
    until = time.time()
    data = service.decision_log_or_fail().log.overview(until - span, until)
    classes = {
        name: charts.stacked_bars(data.hours, series, title=f"{name} decisions per hour")
        for name, series in sorted(data.by_class.items())
    }
    issued = data.step_ups.get("issued", 0)
    answered = sum(v for k, v in data.step_ups.items() if k != "issued")
    scorer = service.engine.scorer
    return page(
        request,
        "overview.html",
        {
            "session": session,
            "range": period,
            "ranges": list(RANGES),
            "data": data,
            "classes": classes,
            "histogram": charts.histogram(data.score_bins, title="score histogram"),
            "funnel": {
                "issued": issued,
                "passed": data.step_ups.get("passed", 0),
                "failed": data.step_ups.get("failed", 0) + data.step_ups.get("insufficient_acr", 0),
                "unanswered": max(issued - answered, 0),
            },
            "live_model": scorer.model_version if scorer else None,
            "live_policy": scorer.policy.version if scorer else None,
            "shadow": service.engine.shadow,
        },
    )


@console.get("/decisions")
def decisions(
    request: Request,
    service: ServiceDep,
    user_id: Annotated[str | None, Query(max_length=256)] = None,
    decision: Annotated[str | None, Query(max_length=16)] = None,
    action_class: Annotated[str | None, Query(max_length=64)] = None,
    reason: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[str | None, Query(max_length=40)] = None,
    until: Annotated[str | None, Query(max_length=40)] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    notice: Annotated[str | None, Query(max_length=200)] = None,
) -> HTMLResponse:
    session = current_session(request, service)
    where = DecisionFilter(
        user_id=user_id or None,
        decision=decision or None,
        action_class=action_class or None,
        reason=reason or None,
        since=_parse_time(since, "since"),
        until=_parse_time(until, "until"),
    )
    result = service.decision_log_or_fail().log.decisions(
        where, limit=50, cursor=Cursor.decode(cursor) if cursor else None
    )
    filters = {
        "user_id": user_id or "",
        "decision": decision or "",
        "action_class": action_class or "",
        "reason": reason or "",
        "since": since or "",
        "until": until or "",
    }
    next_url = None
    if result.next_cursor:
        query = {k: v for k, v in filters.items() if v}
        next_url = "/console/decisions?" + urlencode({**query, "cursor": result.next_cursor})
    classes = sorted(service.engine.scorer.policy.classes) if service.engine.scorer else []
    return page(
        request,
        "decisions.html",
        {
            "session": session,
            "items": result.items,
            "filters": filters,
            "next_url": next_url,
            "classes": classes,
            "quote": quote,
            "notice": notice,
        },
    )


@console.get("/users/{user_id}")
def user(
    request: Request,
    service: ServiceDep,
    user_id: str,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    notice: Annotated[str | None, Query(max_length=200)] = None,
) -> HTMLResponse:
    session = current_session(request, service)
    timeline = service.decision_log_or_fail().log.timeline(
        user_id, limit=50, cursor=Cursor.decode(cursor) if cursor else None
    )
    items = timeline.items
    _attach_drivers(service, items)
    located = [i for i in reversed(items) if i["latitude"] is not None]
    places = charts.place_map(
        [
            (
                float(i["latitude"]),
                float(i["longitude"]),
                ", ".join(x for x in (i["city"], i["country"]) if x),
                f"{i['timestamp']} {i['city'] or ''} {i['country'] or ''} {i['decision']}",
                i["decision"],
            )
            for i in located
        ],
        title=f"places of {user_id} over time",
    )
    next_url = None
    if timeline.next_cursor:
        next_url = f"/console/users/{quote(user_id, safe='')}?cursor={timeline.next_cursor}"
    return page(
        request,
        "user.html",
        {
            "session": session,
            "user_id": user_id,
            "user_path": quote(user_id, safe=""),
            "items": items,
            "devices": service.devices_of(user_id),
            "places": places,
            "next_url": next_url,
            "notice": notice,
            "labels": [label.value for label in FeedbackLabel],
            "stamp": _stamp,
        },
    )


def _attach_drivers(service: Service, items: list[dict[str, Any]]) -> None:
    """Per decision, the features that pushed its score most above the user's usual events.

    Each feature in turn is set to its median over the user's allowed decisions on
    the page and the row rescored: the biggest drops name the drivers.
    """
    scorer = service.engine.scorer
    usual = [i["features"] for i in items if i["decision"] == "allow" and i["features"]]
    if scorer is None or not usual:
        for item in items:
            item["drivers"] = []
        return
    from risk_engine.features.registry import FEATURE_NAMES

    baseline = [statistics.median(u.get(n, 0.0) for u in usual) for n in FEATURE_NAMES]
    import numpy as np

    model = scorer.artifact.model
    for item in items:
        features = item["features"]
        item["drivers"] = []
        if not features or item["decision"] == "allow":
            continue
        row = np.asarray([features.get(n, 0.0) for n in FEATURE_NAMES], dtype=np.float64)
        score = model.score_one(row)
        drops = []
        for i, name in enumerate(FEATURE_NAMES):
            if row[i] == baseline[i]:
                continue
            probe = row.copy()
            probe[i] = baseline[i]
            drops.append((score - model.score_one(probe), name, row[i], baseline[i]))
        drops.sort(reverse=True)
        item["drivers"] = [
            {"feature": name, "value": value, "usual": usual_value, "delta": delta}
            for delta, name, value, usual_value in drops[:3]
            if delta > 0.001
        ]


# -- the operator's actions ---------------------------------------------------------------


@console.post("/events/{event_id}/feedback")
def feedback(
    request: Request,
    service: ServiceDep,
    event_id: str,
    user_id: Annotated[str, Form(max_length=256)],
    label: Annotated[FeedbackLabel, Form()],
    csrf: Annotated[str, Form(max_length=128)] = "",
) -> RedirectResponse:
    session = current_session(request, service)
    check_csrf(session, csrf)
    service.feedback(event_id, FeedbackIn(label=label, user_id=user_id))
    notice = f"{event_id} marked {label.value.replace('_', ' ')}"
    return _back_to_user(user_id, notice)


@console.post("/users/{user_id}/devices/{device_key}/untrust")
def untrust(
    request: Request,
    service: ServiceDep,
    user_id: str,
    device_key: str,
    csrf: Annotated[str, Form(max_length=128)] = "",
) -> RedirectResponse:
    session = current_session(request, service)
    check_csrf(session, csrf)
    service.untrust_device(user_id, device_key)
    return _back_to_user(user_id, "device no longer trusted: its next use needs a step-up")


@console.get("/users/{user_id}/erase")
def erase_form(request: Request, service: ServiceDep, user_id: str) -> HTMLResponse:
    session = current_session(request, service)
    return page(
        request,
        "erase.html",
        {
            "session": session,
            "user_id": user_id,
            "user_path": quote(user_id, safe=""),
            "error": None,
        },
    )


@console.post("/users/{user_id}/erase")
def erase(
    request: Request,
    service: ServiceDep,
    user_id: str,
    confirm: Annotated[str, Form(max_length=256)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    session = current_session(request, service)
    check_csrf(session, csrf)
    if confirm != user_id:
        return page(
            request,
            "erase.html",
            {
                "session": session,
                "user_id": user_id,
                "user_path": quote(user_id, safe=""),
                "error": "Type the user id exactly to confirm.",
            },
            status_code=422,
        )
    try:
        service.erase(user_id)
        notice = "user erased"
    except RiskEngineError as exc:
        if exc.status_code != 404:
            raise
        notice = "no profile was kept for this user; the decision log entries are erased"
    return RedirectResponse(f"/console/decisions?{urlencode({'notice': notice})}", 303)


def _back_to_user(user_id: str, notice: str) -> RedirectResponse:
    return RedirectResponse(
        f"/console/users/{quote(user_id, safe='')}?{urlencode({'notice': notice})}",
        status_code=303,
    )
