"""The API's request metrics: a pure ASGI middleware, so that every answer is counted, the error envelope's
included. The route label is the matched route's template, never the raw path: ids in paths would make a
series per request, and a scanner's paths a series per probe."""

from __future__ import annotations

import time
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Histogram, start_http_server
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "mdmq_http_requests",
    "HTTP requests answered, by method, route template ('unmatched' for no route) and status code.",
    ["method", "route", "status"],
)
DURATION = Histogram(
    "mdmq_http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before it starts a response

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "other"
            route = _route(scope)
            REQUESTS.labels(method, route, str(status)).inc()
            DURATION.labels(method, route).observe(time.perf_counter() - started)


def _route(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


def serve_metrics(*, host: str, port: int) -> WSGIServer:
    """The API process's /metrics, on its own port (`MDMQ_API_METRICS_PORT`), as the worker and the scheduler
    serve theirs: never on the API's port, where any client could read them."""
    server, _ = start_http_server(port, addr=host)  # on a thread of its own
    return server
