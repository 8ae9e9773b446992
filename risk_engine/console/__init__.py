"""The operator's console at /console/: decisions, users, reasons and step-ups in a web page.

It reads the decision log (``risk_engine.decision_log``) and the profile store,
and acts through the same Service as the API (feedback, untrust a device,
erase a user). Sign-in takes an admin-scope API key.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from risk_engine.console.routes import STATIC_PATH, SignInRequired, console


async def _to_sign_in(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    target = "/console/sign-in?" + urlencode({"next": exc.next_path})
    return RedirectResponse(target, status_code=303)


def install_console(app: FastAPI) -> None:
    """Serve the console's pages and its stylesheet from this app."""
    app.mount(
        STATIC_PATH, StaticFiles(directory=Path(__file__).parent / "static"), name="console-static"
    )
    app.include_router(console)
    app.add_exception_handler(SignInRequired, _to_sign_in)


__all__ = ["install_console"]
