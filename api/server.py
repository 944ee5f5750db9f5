"""The HTTP server that runs the API: uvicorn, with the limits a client on the open network meets.

uvicorn bounds idle keep-alive connections (`timeout_keep_alive`) but waits for ever on a request head that
arrives a byte at a time, and answers its own errors (a malformed request, its connection limit) in plain
text. `ApiProtocol` is its HTTP/1.1 protocol with a deadline on each request head (`api_header_timeout_s`,
from the connection's opening or its previous answer), a limit on the connections of the process that
answers 503, and both of those answers in the API's error envelope. The body's deadline is the app's
(`api.limits.BodyLimit`)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from api.errors import INVALID_REQUEST, SERVICE_BUSY, envelope
from api.limits import refuse
from config.settings import Settings

log = logging.getLogger(__name__)

# On SIGTERM uvicorn stops accepting and gives the requests in flight this long, then cancels them: a request
# may wait for its body (`api_body_timeout_s`, 10 s) and a statement for a lock (30 s); the longest the
# API serves, a create of 10,000 deployments, commits in about a second. The deploy files' stop grace is
# longer (tests/deploy).
SHUTDOWN_S = 60


class ApiProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with a deadline on each request head and a connection limit."""

    header_timeout_s = 10.0
    max_connections = 1_000

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.head_deadline: asyncio.TimerHandle | None = None
        self.limit_concurrency = None  # checked by `_within_limit` instead, to answer in the envelope
        self.app = self._within_limit(self.app)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is in: the body's deadline is the app's
            self._cancel_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._await_head()  # the next request on this connection, with a deadline of its own

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        status, code, message = INVALID_REQUEST
        body = json.dumps(envelope(code, f"{message}: malformed HTTP")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        response = h11.Response(status_code=status, headers=headers, reason=b"Bad Request")
        for event in (response, h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _within_limit(self, app: ASGIApp) -> ASGIApp:
        async def within_limit(scope: Scope, receive: Receive, send: Send) -> None:
            # This connection and this request's task are counted already.
            busy = len(self.connections) > self.max_connections or len(self.tasks) > self.max_connections
            if not busy:
                await app(scope, receive, send)
                return
            log.warning("API connection limit reached (%d): answered 503", self.max_connections)
            await refuse(send, SERVICE_BUSY, f"more than {self.max_connections} connections in this process")

        return within_limit

    def _await_head(self) -> None:
        self._cancel_head_deadline()
        self.head_deadline = self.loop.call_later(self.header_timeout_s, self._head_too_slow)

    def _cancel_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _head_too_slow(self) -> None:
        self.head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def api_protocol(settings: Settings) -> type[ApiProtocol]:
    limits = {
        "header_timeout_s": settings.api_header_timeout_s,
        "max_connections": settings.api_max_connections,
    }
    return type("ApiProtocol", (ApiProtocol,), limits)


def server_config(app: Any, settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    """How `mdmq api` serves `app`, and how the tests serve it."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=api_protocol(settings),
        timeout_keep_alive=settings.api_keep_alive_s,
        log_config=None,  # uvicorn's lines go to the process's handler, JSON in production
        access_log=False,  # `api.access_log` writes it, with latency and request id
        timeout_graceful_shutdown=SHUTDOWN_S,
    )
