"""The request body the API reads: at most `MDMQ_API_MAX_BODY_BYTES`, all of it within
`MDMQ_API_BODY_TIMEOUT_S` of the request's head. A pure ASGI middleware, so that an oversize body
(announced by `content-length` or not: chunked) is refused 413, and a body that trickles in is refused 408,
with the error envelope and the connection closed, before any of it reaches a route."""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import BODY_TOO_LARGE, BODY_TOO_SLOW, envelope


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        announced = _content_length(scope)
        if announced is not None and announced > self.max_bytes:
            await refuse(send, BODY_TOO_LARGE, f"{announced} bytes, at most {self.max_bytes}")
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                messages = await self._read_body(receive)
        except TimeoutError:
            await refuse(send, BODY_TOO_SLOW, f"not complete within {self.timeout_s:g} s")
            return
        if messages is None:
            await refuse(send, BODY_TOO_LARGE, f"more than {self.max_bytes} bytes, at most {self.max_bytes}")
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _read_body(self, receive: Receive) -> list[Message] | None:
        """The body's messages, up to the end (or a disconnect); None past the limit."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return None
            if not message.get("more_body", False):
                return messages


async def refuse(send: Send, error: tuple[int, int, str], detail: str) -> None:
    """Answer `error` in the envelope, before the app has read the request, and close the connection."""
    status, code, message = error
    body = json.dumps(envelope(code, f"{message}: {detail}")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
