"""/docs works without internet: their assets come from this server.

Issue: the interactive API page loaded Swagger UI from a CDN, and bank networks
have no internet, so /docs was blank there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

Serve = Callable[..., Any]


def test_docs_page_references_only_this_server(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    html = response.text
    assert "cdn.jsdelivr.net" not in html and "fonts.googleapis.com" not in html
    assert "/static/docs/" in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        got = client.get(f"/static/docs/{asset}")
        assert got.status_code == 200 and len(got.content) > 10_000, asset


def test_docs_page_is_not_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/docs" not in paths


@pytest.mark.slow
def test_swagger_ui_renders_with_every_outside_request_blocked(serve: Serve, browser: Any) -> None:
    server = serve()
    browser.get(server.base_url + "/docs")
    title = browser.wait_for(
        "const t = document.querySelector('.swagger-ui .info .title');"
        " return t ? t.textContent : null;"
    )
    browser.screenshot("docs")
    assert title is not None and "risk-engine" in title, "Swagger UI did not render"
    operations = browser.driver.execute_script(
        "return document.querySelectorAll('.opblock-summary-path').length;"
    )
    assert operations >= 5
    assert browser.outside_requests() == []
    assert browser.console_errors() == []
