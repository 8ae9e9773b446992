"""The body limit and the stall timeout as a client sees them on the wire (real uvicorn).

Issue 15: a client that sends too much must read the 413 (not a reset), and a
body that never finishes must not hold its connection.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

# conftest's API_KEY (scope decide).
API_KEY = "rek_test-key-for-the-api-tests"
TRIES = 20
SIZES = {"1MB": 1_000_000, "3MB": 3_000_000}


def _urllib_status(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _httpx_status(url: str, body: bytes) -> tuple[int, bytes]:
    response = httpx.post(
        url,
        content=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    return response.status_code, response.content


CLIENTS = {"urllib": _urllib_status, "httpx": _httpx_status}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("client", CLIENTS)
def test_an_oversized_body_gets_a_readable_413_every_time(
    serve: Callable[..., Any], client: str, size: str
) -> None:
    server = serve()
    body = b"x" * SIZES[size]
    post = CLIENTS[client]
    failures: list[str] = []
    for route in ("/v1/decisions", "/v1/events/e-1/feedback"):
        for _ in range(TRIES // 2):
            try:
                status, content = post(server.base_url + route, body)
            except (OSError, httpx.HTTPError) as exc:
                failures.append(f"{route}: {type(exc).__name__}: {exc}")
                continue
            if status != 413 or orjson.loads(content)["error"] != "payload_too_large":
                failures.append(f"{route}: {status} {content[:80]!r}")
    assert not failures, f"{len(failures)} of {TRIES} tries: {failures[:3]}"


def _stalled(port: int) -> socket.socket:
    """A connection that sent its headers and 10 of the 1000 body bytes it declared."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        b"POST /v1/decisions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + b'{"event_id'
    )
    return sock


def _answer_until_closed(sock: socket.socket, deadline: float) -> bytes | None:
    """Everything the server sent before closing; None when still open at ``deadline``."""
    received = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def test_a_stalled_body_gets_408_and_a_close_within_the_timeout(
    serve: Callable[..., Any],
) -> None:
    server = serve(RISK_ENGINE_BODY_TIMEOUT_S="1")
    port = int(server.base_url.rsplit(":", 1)[1])
    sockets = [_stalled(port) for _ in range(50)]
    started = time.monotonic()
    try:
        answers = [_answer_until_closed(s, started + 4.0) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()
    still_open = sum(answer is None for answer in answers)
    assert still_open == 0, f"{still_open} of 50 stalled connections still open after 4 s"
    assert all(a is not None and a.startswith(b"HTTP/1.1 408 ") for a in answers), answers[0]
    # The server is still there for everyone else.
    assert httpx.get(server.base_url + "/healthz").status_code == 200


def test_a_streamed_oversized_body_gets_a_readable_413(serve: Callable[..., Any]) -> None:
    server = serve()

    def chunks() -> Any:
        # No Content-Length: the server learns the size only by reading.
        for _ in range(100):
            yield b" " * 10_000

    for _ in range(5):
        response = httpx.post(
            server.base_url + "/v1/decisions",
            content=chunks(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
        )
        assert response.status_code == 413
        assert response.json()["error"] == "payload_too_large"


def test_a_slow_body_within_the_timeout_is_decided(serve: Callable[..., Any]) -> None:
    server = serve(RISK_ENGINE_BODY_TIMEOUT_S="3")
    port = int(server.base_url.rsplit(":", 1)[1])
    body = orjson.dumps(
        {
            "event_id": "e-slow",
            "timestamp": "2026-03-01T08:15:30Z",
            "user_id": "u-slow",
            "action": "login",
            "ip": "81.2.69.160",
        }
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/decisions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        for start in range(0, len(body), 40):
            time.sleep(0.3)
            sock.sendall(body[start : start + 40])
        answer = _answer_until_closed(sock, time.monotonic() + 10)
    assert answer is not None and answer.startswith(b"HTTP/1.1 200 "), answer
