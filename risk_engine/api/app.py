"""The app factory: routes, handlers and middleware now; the engine once, in the lifespan.

Nothing happens at import time. ``create_app`` wires the app; its lifespan
makes the var directory and the files the service writes private, builds the
Engine (unless one is injected, as tests do), the audit and feedback logs,
installs the SIGHUP reload and freezes the start-up heap out of the GC.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from risk_engine import __version__
from risk_engine.api.docs import install_docs
from risk_engine.api.endpoint import DecisionEndpoint
from risk_engine.api.errors import install_error_handlers
from risk_engine.api.metrics import Metrics
from risk_engine.api.middleware import BodyLimitMiddleware
from risk_engine.api.routes import ops, v1
from risk_engine.api.service import Service
from risk_engine.assembly import build_engine
from risk_engine.config import Settings
from risk_engine.console import install_console
from risk_engine.decision_log.process import PENDING_FLUSH_S
from risk_engine.engine import Engine
from risk_engine.errors import RiskEngineError

log = logging.getLogger("risk_engine.api")

DAY_S = 86400.0
PURGE_EVERY_S = 3600.0

DESCRIPTION = (
    "Behavioral risk scoring for step-up authentication. POST an event to "
    "/v1/decisions; a step_up decision carries a challenge whose result the "
    "application reports to /v1/challenges/{id}/result."
)


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """The decision service; ``engine`` injects a ready Engine instead of building one."""
    settings = settings or Settings()
    app = FastAPI(
        title="risk-engine",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # The interactive pages are served with local assets (api/docs.py), not a CDN's.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.injected_engine = engine
    # Outermost first: the body's size and time limits, then POST /v1/decisions served
    # without FastAPI's per-route machinery (api/endpoint.py), then the app for everything else.
    app.add_middleware(DecisionEndpoint, state=app.state)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
        drain_bytes=settings.max_drain_bytes,
    )
    install_error_handlers(app)
    app.include_router(v1)
    app.include_router(ops)
    install_docs(app)
    install_console(app)
    if not settings.auth_disabled and not settings.key_table:
        log.warning("no API keys configured: every /v1 request will be refused (401)")
    return app


def server_options(*, access_log: bool = False) -> dict[str, Any]:
    """The uvicorn settings of ``risk-engine serve`` (benchmarks serve their no-op with them).

    No proxy headers (the client address is the socket's unless a deployment says
    otherwise), no Server header, and no access log unless asked for.
    """
    return {"proxy_headers": False, "server_header": False, "access_log": access_log}


def create_app_from_env() -> FastAPI:
    """The factory uvicorn imports in each worker (``--factory``): settings from RISK_ENGINE_*.

    Bad settings end the process with one line, not a traceback per worker.
    """
    try:
        settings = Settings.from_environment()
    except RiskEngineError as exc:
        raise SystemExit(f"risk-engine: error: {exc.message}") from None
    except ValueError as exc:  # pydantic's ValidationError names the variable
        raise SystemExit(f"risk-engine: error: invalid settings: {exc}") from None
    return create_app(settings)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Build the engine once per process, serve, then release what was built."""
    settings: Settings = app.state.settings
    injected: Engine | None = app.state.injected_engine
    # Refused before anything is keyed under a secret only this machine has.
    settings.require_shared_secret()
    # var/ 0700, its files 0600, before the store, the secret or the logs are written.
    log.info("settings: %s", settings.effective())
    await run_in_threadpool(settings.secure_files)
    engine = injected if injected is not None else await run_in_threadpool(build_engine, settings)
    await run_in_threadpool(engine.warm_up)
    service = Service(settings, engine, metrics=app.state.metrics, owns_engine=injected is None)
    app.state.service = service
    # Model arrays and GeoIP live as long as the process: keep the GC from rescanning them.
    gc.collect()
    gc.freeze()
    remove_handler = _install_sighup(service)
    purging = asyncio.create_task(_purge_expired(service, settings.retention_days * DAY_S))
    flushing = asyncio.create_task(_flush_decision_log(service))
    log.info("serving model %s", engine.scorer.model_version if engine.scorer else "(none)")
    try:
        yield
    finally:
        purging.cancel()
        flushing.cancel()
        remove_handler()
        app.state.service = None
        service.close()
        app.state.metrics.close()
        gc.unfreeze()


async def _flush_decision_log(service: Service) -> None:
    """Send the decision log's partial batch every few milliseconds, on the event loop."""
    writer = service.decision_log
    if writer is None:
        return
    while True:
        await asyncio.sleep(PENDING_FLUSH_S)
        writer.flush_pending()


async def _purge_expired(service: Service, retention_s: float) -> None:
    """Erase profiles, decision log rows and audit segments past retention: at start, hourly.

    (Redis expires its keys by itself.)
    """
    while True:
        horizon = time.time() - retention_s
        try:
            removed = await run_in_threadpool(service.engine.store.purge, horizon)
            if removed:
                log.info("retention: erased %d profiles", removed)
            if service.decision_log is not None:
                await run_in_threadpool(service.decision_log.log.purge, horizon)
        except RiskEngineError as exc:
            log.warning("retention purge failed: %s", exc.message)
        try:
            await run_in_threadpool(service.audit_writer.expire, horizon)
        except OSError as exc:
            log.warning("audit segments past retention not deleted: %s", exc)
        await asyncio.sleep(PURGE_EVERY_S)


def _install_sighup(service: Service) -> Callable[[], None]:
    """SIGHUP reloads model and policy; only the main thread may own signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        return _nothing
    loop = asyncio.get_running_loop()

    def on_hup() -> None:
        log.info("SIGHUP: reloading model and policy")
        loop.run_in_executor(None, service.reload_quietly)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    except (NotImplementedError, RuntimeError, ValueError):
        return _nothing

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return remove


def _nothing() -> None:
    return None
