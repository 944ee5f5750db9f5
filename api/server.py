"""The HTTP server that runs the API: uvicorn, with the limits a client on the open network meets.

uvicorn bounds idle keep-alive connections (`timeout_keep_alive`) and the connections of a process
(`limit_concurrency`: a request beyond it is answered 503), but it waits for ever on a request head that
arrives a byte at a time: `HeadTimeoutProtocol` closes a connection whose head is not complete within
`api_header_timeout_s` of its opening or of its previous answer. The body's deadline is the app's
(`api.limits.BodyTimeout`), so that its answer is the API's error envelope."""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from config.settings import Settings


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with a deadline on each request head."""

    header_timeout_s = 10.0

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.head_deadline: asyncio.TimerHandle | None = None

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


def head_timeout_protocol(header_timeout_s: float) -> type[HeadTimeoutProtocol]:
    return type("HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"header_timeout_s": header_timeout_s})


def server_config(app: Any, settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    """How `mdmq api` serves `app`, and how the tests serve it."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=head_timeout_protocol(settings.api_header_timeout_s),
        timeout_keep_alive=settings.api_keep_alive_s,
        limit_concurrency=settings.api_max_connections,
        log_config=None,
    )
