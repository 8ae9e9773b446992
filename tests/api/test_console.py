"""The operator's console: sign-in, pages, filters, actions, CSRF, and a real browser."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from risk_engine.api import create_app
from risk_engine.config import Settings
from risk_engine.console.session import COOKIE

EventFactory = Callable[..., dict[str, Any]]
Serve = Callable[..., Any]


@pytest.fixture
def console(settings: Settings) -> Iterator[TestClient]:
    """The app in-process, with no API key header: the console signs in with a form."""
    with TestClient(create_app(settings), follow_redirects=False) as client:
        yield client


def sign_in(client: TestClient, key: str) -> str:
    """Sign in; returns the CSRF token of the session (read from a page's sign-out form)."""
    response = client.post("/console/sign-in", data={"api_key": key, "next": "/console/overview"})
    assert response.status_code == 303, response.text
    page = client.get("/console/decisions")
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match
    return match.group(1)


def decide(client: TestClient, api_key: str, events: list[dict[str, Any]]) -> list[Any]:
    out = [
        client.post("/v1/decisions", json=e, headers={"Authorization": f"Bearer {api_key}"}).json()
        for e in events
    ]
    assert client.app.state.service.decision_log.flush()  # type: ignore[attr-defined]
    return out


@pytest.mark.parametrize(
    "path", ["/console/overview", "/console/decisions", "/console/users/alice", "/console/"]
)
def test_signed_out_pages_redirect_to_sign_in(console: TestClient, path: str) -> None:
    response = console.get(path)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/console/")
    if path != "/console/":
        assert response.headers["location"].startswith("/console/sign-in?next=")


def test_a_wrong_key_is_refused_and_a_right_one_gets_a_strict_cookie(
    console: TestClient, api_key: str, admin_api_key: str
) -> None:
    for wrong in ("rek_wrong", api_key):  # unknown, and a key of scope decide
        refused = console.post("/console/sign-in", data={"api_key": wrong})
        assert refused.status_code == 401 and "not an admin key" in refused.text
        assert COOKIE not in console.cookies
    accepted = console.post(
        "/console/sign-in", data={"api_key": admin_api_key, "next": "//evil.example"}
    )
    assert accepted.status_code == 303
    assert accepted.headers["location"] == "/console/overview"  # no open redirect
    cookie = accepted.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    assert admin_api_key not in accepted.headers["set-cookie"]


def test_a_forged_cookie_is_not_a_session(console: TestClient, admin_api_key: str) -> None:
    sign_in(console, admin_api_key)
    value = console.cookies[COOKIE]
    payload, _, mac = value.partition(".")
    console.cookies.clear()
    console.cookies.set(COOKIE, payload + "." + mac[::-1])
    assert console.get("/console/overview").status_code == 303


def test_pages_render_what_the_log_holds(
    console: TestClient,
    api_key: str,
    admin_api_key: str,
    make_event: EventFactory,
    make_history: Callable[..., Any],
) -> None:
    history = make_history("alice", days=3)
    foreign = make_event(
        user_id="alice", ip="203.2.218.214", session_id="s-x", device={"id": "d-new"}
    )
    decisions = decide(console, api_key, [*history, foreign])
    assert decisions[-1]["decision"] == "step_up"
    sign_in(console, admin_api_key)
    overview = console.get("/console/overview", params={"range": "7d"})
    assert overview.status_code == 200
    assert "default-src 'none'" in overview.headers["content-security-policy"]
    assert re.search(r'id="total">10<', overview.text)
    listing = console.get("/console/decisions", params={"decision": "step_up"})
    assert foreign["event_id"] not in listing.text  # event ids are on the user page
    assert "/console/users/alice" in listing.text and listing.text.count('class="step_up"') == 1
    user = console.get("/console/users/alice")
    assert user.status_code == 200
    assert foreign["event_id"] in user.text and "<svg" in user.text
    assert decisions[-1]["reasons"][0]["code"] in user.text
    assert "Untrust" in user.text


def test_feedback_untrust_and_erase_need_the_csrf_token(
    console: TestClient,
    api_key: str,
    admin_api_key: str,
    make_event: EventFactory,
    make_history: Callable[..., Any],
) -> None:
    events = make_history("bob", days=2)
    decide(console, api_key, events)
    csrf = sign_in(console, admin_api_key)
    target = events[-1]["event_id"]
    forged = console.post(
        f"/console/events/{target}/feedback",
        data={"label": "confirmed_fraud", "user_id": "bob", "csrf": "nope"},
    )
    assert forged.status_code == 401
    done = console.post(
        f"/console/events/{target}/feedback",
        data={"label": "confirmed_fraud", "user_id": "bob", "csrf": csrf},
    )
    assert done.status_code == 303
    assert console.app.state.service.decision_log.flush()  # type: ignore[attr-defined]
    page = console.get(done.headers["location"]).text
    assert "marked confirmed_fraud" in page

    device_key = re.search(r"/devices/([^/]+)/untrust", page)
    assert device_key, page[page.find('id="devices"') :][:1500]
    untrusted = console.post(
        f"/console/users/bob/devices/{device_key.group(1)}/untrust", data={"csrf": csrf}
    )
    assert untrusted.status_code == 303
    assert "untrusted" in console.get("/console/users/bob").text

    wrong = console.post("/console/users/bob/erase", data={"confirm": "b0b", "csrf": csrf})
    assert wrong.status_code == 422
    assert console.get("/console/users/bob").text.count("<tr class=") >= 6
    erased = console.post("/console/users/bob/erase", data={"confirm": "bob", "csrf": csrf})
    assert erased.status_code == 303
    assert "No decisions logged" in console.get("/console/users/bob").text
    assert "No profile is kept" in console.get("/console/users/bob").text


def test_sign_out_ends_the_session(console: TestClient, admin_api_key: str) -> None:
    csrf = sign_in(console, admin_api_key)
    out = console.post("/console/sign-out", data={"csrf": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/console/sign-in"
    assert console.get("/console/overview").status_code == 303


# -- in a real browser ----------------------------------------------------------------------


@pytest.mark.slow
def test_console_in_a_browser(
    serve: Serve,
    browser: Any,
    api_key: str,
    admin_api_key: str,
    make_event: EventFactory,
    make_history: Callable[..., Any],
) -> None:
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    server = serve()
    headers = {"Authorization": f"Bearer {api_key}"}
    decided = []
    for event in [
        *make_history("alice", days=2),
        make_event(user_id="alice", ip="203.2.218.214", session_id="s-x", device={"id": "d-new"}),
    ]:
        response = httpx.post(server.base_url + "/v1/decisions", json=event, headers=headers)
        assert response.is_success
        decided.append(response.json()["decision"])
    assert "step_up" in decided
    # The log is written by the server's writer process, a moment after the answers.
    admin = {"Authorization": f"Bearer {admin_api_key}"}
    deadline = time.monotonic() + 30.0
    logged = 0
    while logged < len(decided) and time.monotonic() < deadline:
        page = httpx.get(server.base_url + "/v1/decisions?user_id=alice&limit=100", headers=admin)
        logged = len(page.json()["items"])
        time.sleep(0.1)
    assert logged == len(decided)
    driver = browser.driver

    browser.get(server.base_url + "/console/overview")
    assert "/console/sign-in" in driver.current_url
    browser.screenshot("console-sign-in")
    unlabelled = driver.execute_script(
        "return [...document.querySelectorAll('input:not([type=hidden]), select')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).length;"
    )
    assert unlabelled == 0
    # Keyboard only: the key field has focus, Enter submits.
    active = driver.switch_to.active_element
    assert active.get_attribute("id") == "api_key"
    active.send_keys(admin_api_key + Keys.ENTER)
    assert browser.wait_for("return location.pathname === '/console/overview';")
    browser.screenshot("console-overview")
    assert driver.find_element(By.ID, "total").text.strip() != ""

    driver.find_element(By.LINK_TEXT, "Decisions").click()
    assert browser.wait_for("return location.pathname === '/console/decisions';")
    select = driver.find_element(By.ID, "f-decision")
    select.send_keys("step_up")
    driver.find_element(By.CSS_SELECTOR, ".filters button").click()
    assert browser.wait_for("return location.search.includes('decision=step_up');")
    rows = driver.find_elements(By.CSS_SELECTOR, "table.list tbody tr.step_up")
    assert len(rows) >= 1
    browser.screenshot("console-decisions")

    driver.find_element(By.LINK_TEXT, "alice").click()
    assert browser.wait_for("return location.pathname === '/console/users/alice';")
    browser.screenshot("console-user")
    driver.find_element(By.CSS_SELECTOR, "form.inline button").click()
    assert browser.wait_for("return document.querySelector('.notice') !== null;")
    assert "marked" in driver.find_element(By.CSS_SELECTOR, ".notice").text

    unlabelled = driver.execute_script(
        "return [...document.querySelectorAll('input:not([type=hidden]), select')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).length;"
    )
    assert unlabelled == 0
    # The skip link is the first stop of the keyboard.
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert driver.switch_to.active_element.get_attribute("class") == "skip"

    driver.find_element(By.CSS_SELECTOR, ".signout button").click()
    assert browser.wait_for("return location.pathname === '/console/sign-in';")
    browser.get(server.base_url + "/console/users/alice")
    assert "/console/sign-in" in driver.current_url
    assert browser.outside_requests() == []
    assert browser.console_errors() == []
