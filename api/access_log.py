"""The API's access log: one line per request, in the process's log format, with its latency and a request id.

The request id is the client's `X-Request-ID` when it is a plain token (letters, digits, `._:-`, at most 128
characters: nothing a log line or a header could be forged with), else a new one; it goes back in the
answer's `X-Request-ID` and on every line logged while the request is answered. The line names the path
without its query string. uvicorn's own access log is off (`api.server`): it has neither field.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config.logging import log_context

log = logging.getLogger(__name__)

HEADER = "x-request-id"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(scope: Scope) -> str:
    """The client's X-Request-ID when it is sane, else a new one."""
    for name, value in scope["headers"]:
        if name == HEADER.encode():
            given = value.decode("latin-1")
            return given if _SANE.fullmatch(given) else uuid.uuid4().hex
    return uuid.uuid4().hex


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = request_id(scope)
        status = 500  # what the server answers if the app raises before it starts a response

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[HEADER] = rid
            await send(message)

        with log_context(request_id=rid):
            try:
                await self.app(scope, receive, sending)
            finally:
                _log_request(scope, status, time.perf_counter() - started)


def _log_request(scope: Scope, status: int, seconds: float) -> None:
    client = scope.get("client")
    fields = {
        "method": scope["method"],
        "path": scope["path"],
        "status": status,
        "latency_ms": round(seconds * 1000, 1),
        "client": client[0] if client else None,
    }
    log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, fields["latency_ms"], extra=fields)
