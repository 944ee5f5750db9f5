"""The API's access line: latency and a request id, the client's when it is a plain token."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from starlette.types import Message, Receive, Scope, Send

from api.access_log import AccessLog, request_id


def _scope(*headers: tuple[bytes, bytes]) -> dict[str, object]:
    return {"type": "http", "headers": list(headers)}


@pytest.mark.parametrize("given", ["lb-7f3a.2", "0b0e6a8e-5b5c-4f0e-9d7a-3c1f2e4d5a6b", "a:b_c", "x" * 128])
def test_a_plain_request_id_is_kept(given: str) -> None:
    assert request_id(_scope((b"x-request-id", given.encode()))) == given


@pytest.mark.parametrize("given", ["", "x" * 129, 'a", "level": "x', "a b", "a\tb", "é"])
def test_any_other_request_id_is_replaced_by_a_new_one(given: str) -> None:
    made = request_id(_scope((b"x-request-id", given.encode())))
    assert made != given
    assert re.fullmatch(r"[0-9a-f]{32}", made)


def test_without_one_each_request_gets_its_own() -> None:
    assert request_id(_scope()) != request_id(_scope())


async def _hello(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


def _get(path: str, query: bytes, *headers: tuple[bytes, bytes]) -> list[Message]:
    """One request through `AccessLog` around `_hello`; the messages it sent."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "query_string": query, "headers": list(headers)}
    asyncio.run(AccessLog(_hello)(scope, receive, send))
    return sent


def test_the_answer_carries_the_request_id_and_the_line_its_latency(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="api.access_log")
    start, _ = _get("/hello", b"token=never-logged", (b"x-request-id", b"req-1"))

    assert (start["status"], dict(start["headers"])[b"x-request-id"]) == (201, b"req-1")
    (line,) = [r for r in caplog.records if r.name == "api.access_log"]
    fields = line.__dict__
    assert (fields["method"], fields["path"], fields["status"]) == ("GET", "/hello", 201)
    assert isinstance(fields["latency_ms"], float)
    assert "never-logged" not in line.getMessage(), "no query string"
