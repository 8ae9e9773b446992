"""Request bodies bounded in size and in time, as a pure ASGI middleware, outermost.

uvicorn bounds neither: it hands the app a body as it arrives, however long that
takes, and closes a connection with unread bytes in it, which the client sees
as a reset instead of the answer.
"""

from __future__ import annotations

import asyncio

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimitMiddleware:
    """Read every request body whole before the app: 413 beyond ``max_bytes``, 408 when late.

    - Too large (declared, or streamed without a Content-Length): the body is read
      and discarded up to ``drain_bytes`` before the 413 goes out, so that a client
      still sending reads the answer rather than a connection reset. A declared
      length beyond ``drain_bytes``, or an ``Expect: 100-continue`` (the client
      waits before it sends), is answered at once.
    - Late: a body not complete ``timeout_s`` after the headers gets 408.
    Both close the connection. A body within bounds reaches the app as one message.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float, drain_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.drain_bytes = drain_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, chunked, expects_continue = _body_headers(scope)
        if not length and not chunked:
            await self.app(scope, receive, send)
            return
        if (
            length is not None
            and length > self.max_bytes
            and (expects_continue or length > self.drain_bytes)
        ):
            await self._too_large(send)
            return
        body = _Body()
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._read(receive, body)
        except TimeoutError:
            if body.size > self.max_bytes:
                await self._too_large(send)
            else:
                await _answer(
                    send,
                    408,
                    "request_timeout",
                    f"the request body did not arrive within {self.timeout_s:g} s",
                )
            return
        if body.disconnected:
            return  # the client went away: nobody to answer
        if body.size > self.max_bytes:
            await self._too_large(send)
            return
        whole = body.chunks[0] if len(body.chunks) == 1 else b"".join(body.chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": whole, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive, body: _Body) -> None:
        """Read into ``body`` until its end, a disconnect, or the drain bound when too large."""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                body.disconnected = True
                return
            chunk: bytes = message.get("body", b"")
            body.size += len(chunk)
            if body.size <= self.max_bytes:
                body.chunks.append(chunk)
            elif body.chunks:
                body.chunks = []  # too large: what follows is only drained
            if not message.get("more_body", False):
                return
            if body.size > self.max_bytes and body.size > self.drain_bytes:
                return

    async def _too_large(self, send: Send) -> None:
        await _answer(
            send,
            413,
            "payload_too_large",
            f"request body exceeds the limit of {self.max_bytes} bytes",
            limit=self.max_bytes,
        )


class _Body:
    """A body as read so far."""

    __slots__ = ("chunks", "disconnected", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.disconnected = False


async def _answer(send: Send, status: int, code: str, message: str, **extra: int) -> None:
    """An error answer in the app's body shape; the connection closes after it."""
    body = orjson.dumps({"error": code, "message": message, **extra})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _body_headers(scope: Scope) -> tuple[int | None, bool, bool]:
    """(Content-Length or None, chunked, Expect: 100-continue) of a request."""
    length: int | None = None
    chunked = expects_continue = False
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"expect":
            expects_continue = value.lower() == b"100-continue"
    return length, chunked, expects_continue
