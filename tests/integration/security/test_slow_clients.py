"""Slow and abusive clients against the real API on PostgreSQL: a request head or body that trickles in, an
idle keep-alive connection, more connections than a process takes. The limits are set low here; each bound
asserted is twice the limit, generous on a shared machine."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy.engine import Engine

from config.settings import Settings
from tests.helpers import wait_until
from tests.integration.api.conftest import serving
from workers.app import App

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
KEEP_ALIVE_S = 1
MAX_CONNECTIONS = 8
SLOW_CLIENTS = 30
BYTE_EVERY_S = 0.5  # faster than any limit: a per-read timeout would never close these
HEALTHZ_BOUND_S = 2.0  # generous: a shared CI machine; a starved API misses it by far
HEAD = b"GET /healthz HTTP/1.1\r\nHost: mdmq\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"


@dataclass(frozen=True)
class Hangup:
    after_s: float  # from the first byte sent
    answer: bytes  # what the server said before it closed


def trickle(address: tuple[str, int], opening: bytes, slowly: bytes, give_up_s: float) -> Hangup | None:
    """Send `opening` at once, then `slowly` a byte every BYTE_EVERY_S: when the server hung up, or None."""
    with socket.create_connection(address, timeout=give_up_s) as sock:
        sock.settimeout(BYTE_EVERY_S)
        started = time.monotonic()
        answer = b""
        if opening:
            sock.sendall(opening)
        pending = list(slowly)
        while time.monotonic() - started < give_up_s:
            try:
                if pending:
                    sock.send(bytes([pending.pop(0)]))
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:  # reset, broken pipe: closed
                return Hangup(time.monotonic() - started, answer)
            if not data:
                return Hangup(time.monotonic() - started, answer)
            answer += data
        return None


def address(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    assert parts.hostname
    assert parts.port
    return parts.hostname, parts.port


@pytest.fixture
def slow_limits(pg: Engine, postgres_url: str) -> Iterator[str]:
    settings = Settings(
        database_url=postgres_url,
        broker_url="stub://",
        api_header_timeout_s=HEADER_TIMEOUT_S,
        api_body_timeout_s=BODY_TIMEOUT_S,
        api_keep_alive_s=KEEP_ALIVE_S,
    )
    app = App(settings)
    try:
        with serving(app) as base_url:
            yield base_url
    finally:
        app.close()


def healthz_latencies(base_url: str, stop: threading.Event) -> list[float]:
    latencies: list[float] = []
    while not stop.is_set():
        started = time.monotonic()
        assert requests.get(base_url + "/healthz", timeout=30).status_code == 200
        latencies.append(time.monotonic() - started)
    return latencies


def test_slow_request_heads_are_closed_and_healthz_answers_meanwhile(slow_limits: str) -> None:
    stop = threading.Event()
    with ThreadPoolExecutor(SLOW_CLIENTS + 1) as pool:
        health = pool.submit(healthz_latencies, slow_limits, stop)
        hangups = list(
            pool.map(
                lambda _: trickle(address(slow_limits), b"", HEAD, 4 * HEADER_TIMEOUT_S), range(SLOW_CLIENTS)
            )
        )
        stop.set()
        latencies = health.result()

    assert all(hangup is not None for hangup in hangups), "every slow head closed"
    assert max(hangup.after_s for hangup in hangups if hangup) <= 2 * HEADER_TIMEOUT_S
    assert all(hangup.answer == b"" for hangup in hangups if hangup), "nothing served to a partial head"
    assert latencies, "/healthz asked while they hung"
    assert max(latencies) <= HEALTHZ_BOUND_S


def test_a_slow_head_on_a_kept_alive_connection_is_closed_too(slow_limits: str) -> None:
    # uvicorn's own keep-alive timer stops at the next request's first byte; the head's deadline does not.
    request = b"GET /healthz HTTP/1.1\r\nHost: mdmq\r\n\r\n"
    hangup = trickle(address(slow_limits), request, HEAD, 4 * HEADER_TIMEOUT_S + KEEP_ALIVE_S)
    assert hangup is not None
    assert hangup.answer.startswith(b"HTTP/1.1 200"), "the first request answered"
    assert hangup.after_s <= 2 * HEADER_TIMEOUT_S


def test_a_slow_body_is_answered_408_in_the_envelope_and_closed(slow_limits: str) -> None:
    head = (
        b"POST /v1/organizations/acme/deployments HTTP/1.1\r\nHost: mdmq\r\n"
        b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n"
    )
    hangup = trickle(address(slow_limits), head, b"{" * 500, 4 * BODY_TIMEOUT_S)
    assert hangup is not None, "closed"
    assert hangup.after_s <= 2 * BODY_TIMEOUT_S
    status, _, body = hangup.answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 408")
    assert b"connection: close" in status.lower()
    assert json.loads(body) == {
        "status": False,
        "error": {"code": 4008, "message": "Request body too slow: not complete within 2 s"},
    }


def test_an_idle_keep_alive_connection_is_closed(slow_limits: str) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: mdmq\r\n\r\n"
    hangup = trickle(address(slow_limits), request, b"", 4 * KEEP_ALIVE_S + HEADER_TIMEOUT_S)
    assert hangup is not None
    assert hangup.answer.startswith(b"HTTP/1.1 200")
    assert hangup.after_s <= 2 * KEEP_ALIVE_S


def test_requests_beyond_the_connection_limit_are_answered_503_in_the_envelope(
    pg: Engine, postgres_url: str
) -> None:
    settings = Settings(database_url=postgres_url, broker_url="stub://", api_max_connections=MAX_CONNECTIONS)
    app = App(settings)
    try:
        with serving(app) as base_url:
            assert requests.get(base_url + "/healthz", timeout=30).status_code == 200
            held = [socket.create_connection(address(base_url), timeout=30) for _ in range(MAX_CONNECTIONS)]
            try:
                wait_until(
                    lambda: requests.get(base_url + "/healthz", timeout=30).status_code == 503,
                    10,
                    "a request beyond the limit to be answered 503",
                )
                refused = requests.get(base_url + "/healthz", timeout=30)
                message = f"Service busy: more than {MAX_CONNECTIONS} connections in this process"
                assert (refused.status_code, refused.json()) == (
                    503,
                    {"status": False, "error": {"code": 5003, "message": message}},
                )
                assert refused.headers["connection"] == "close"
            finally:
                for sock in held:
                    sock.close()
            wait_until(
                lambda: requests.get(base_url + "/healthz", timeout=30).status_code == 200,
                10,
                "the API to answer again once the connections are gone",
            )
    finally:
        app.close()
