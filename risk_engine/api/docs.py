"""The interactive API page, served with local assets: bank networks have no internet.

FastAPI's own ``/docs`` loads Swagger UI from a CDN. Here the same page points at
copies served by this app, taken from the ``fastapi-offline`` package, which ships
them (it is used for its files only). There is no ``/redoc``: the ReDoc bundle
fetches its own logo from its CDN whatever the page says.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS_PATH = "/static/docs"

docs = APIRouter(include_in_schema=False)


def assets_dir() -> Path:
    """Where the installed Swagger UI files are."""
    return Path(str(files("fastapi_offline") / "static"))


@docs.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI over this app's OpenAPI document, every asset from this app."""
    app: FastAPI = request.app
    return get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{app.title} API",
        swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
    )


def install_docs(app: FastAPI) -> None:
    """Serve /docs and its assets from this app; no request leaves it."""
    app.mount(ASSETS_PATH, StaticFiles(directory=assets_dir()), name="docs-assets")
    app.include_router(docs)
