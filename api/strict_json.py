"""Every JSON request body, read strictly before any route sees it: a value the database cannot store (NUL,
a lone surrogate, NaN, ±Infinity, a number beyond a double or an integer beyond 64 bits, nesting deeper
than 32) is a 400 with an RFC 6901 pointer to it, the same on PostgreSQL and SQLite.

A pure ASGI middleware, as `BodyLimit` (which sits outside it, so the body read here is bounded): it covers
every route that takes JSON, those to come included. A body that is not JSON at all is left to the route,
which answers it as before.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import INVALID_REQUEST, envelope
from models.json_values import (
    BEYOND_64_BITS,
    INT_MAX,
    INT_MIN,
    MAX_DEPTH,
    Refused,
    Unstorable,
    first_unstorable,
)

_LONGEST_INT = len(str(INT_MIN))  # sign included; longer literals are not even read as ints
# What a JSON text is made of, for finding where it nests too deep: strings whole, and brackets.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class StrictJson:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        messages, body = await _read(receive)
        problem = unstorable(body) if body else None
        if problem is not None:
            await _refuse(send, problem)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def unstorable(body: bytes) -> Unstorable | None:
    """The first value of a JSON body the database cannot store; None for a good body, and for one that is
    not JSON (the route says what is wrong with it)."""
    try:
        document = _parse(body)
    except RecursionError:  # nested hundreds deep: cut at the first container too deep, and read that
        try:
            document = _parse(_cut_too_deep(body))
        except (RecursionError, ValueError):
            return None
    except ValueError:  # not JSON, or not UTF-8
        return None
    return first_unstorable(document)


def _parse(body: bytes) -> Any:
    return json.loads(body, parse_constant=_constant, parse_float=_float, parse_int=_int)


def _constant(name: str) -> Refused:
    return Refused(f"{name} is not a JSON number")


def _float(text: str) -> float | Refused:
    value = float(text)
    return value if math.isfinite(value) else Refused("a number beyond the range of a double")


def _int(text: str) -> int | Refused:
    value = int(text) if len(text) <= _LONGEST_INT else None  # int() of thousands of digits is slow
    if value is None or not INT_MIN <= value <= INT_MAX:
        return Refused(BEYOND_64_BITS)
    return value


def _cut_too_deep(body: bytes) -> bytes:
    """`body` up to the first array or object nested deeper than MAX_DEPTH, which becomes `[]`, and closed:
    a document the parser reads, in which that `[]` is the first value too deep."""
    closers: list[bytes] = []
    for token in _TOKENS.finditer(body):
        bracket = token.group()
        if bracket in (b"[", b"{"):
            if len(closers) == MAX_DEPTH:
                return body[: token.start()] + b"[]" + b"".join(reversed(closers))
            closers.append(b"]" if bracket == b"[" else b"}")
        elif bracket in (b"]", b"}") and closers:
            closers.pop()
    return body


def _is_json(scope: Scope) -> bool:
    """As FastAPI may read a body as JSON: `application/json`, `application/…+json`, or no (or an empty)
    content type, which FastAPI versions before 0.132 read as JSON."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media_type: bytes = value.split(b";")[0].strip().lower()
            return (
                not media_type
                or media_type == b"application/json"
                or (media_type.startswith(b"application/") and media_type.endswith(b"+json"))
            )
    return True


async def _read(receive: Receive) -> tuple[list[Message], bytes]:
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return messages, b"".join(chunks)


async def _refuse(send: Send, problem: Unstorable) -> None:
    status, code, message = INVALID_REQUEST
    where = problem.pointer if len(problem.pointer) <= 200 else problem.pointer[:200] + "…"
    text = f"{message}: {where or 'the body'}: {problem.reason}"
    body = json.dumps(envelope(code, text, pointer=where)).encode()  # a key of megabytes is not echoed
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
