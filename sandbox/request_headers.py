"""RFC 9113 request-header rules (8.2, 8.3), checked in the same pass that turns a header block into text.

h2 can check these itself (`validate_inbound_headers`), but does so in a chain of seven generators that cost
the emulators more CPU per request than handling the push. The rules are the same as h2's: field names
lowercase, without controls, spaces or a colon past the first octet; values without NUL, CR or LF and not
surrounded by whitespace; no connection-specific fields; `te` only "trailers"; request pseudo-header fields
only, each once and before the regular fields, with :method, :scheme and a non-empty :path (ordinary CONNECT:
neither of the latter); :authority or host present, and equal when both are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})
# Names the emulators' clients send on every request, so their octets need no checking.
_KNOWN_NAMES = {
    name.encode(): name
    for name in (
        "authorization",
        "content-type",
        "content-length",
        "user-agent",
        "accept",
        "accept-encoding",
        "apns-id",
        "apns-topic",
        "apns-push-type",
        "apns-priority",
        "apns-expiration",
        "apns-collapse-id",
    )
}
# RFC 9113 8.2.1: no 0x00-0x20, no uppercase 0x41-0x5a, no 0x7f-0xff, no colon.
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x40\x5b-\x7e]+")
_BAD_FIELD_VALUE = re.compile(rb"[\x00\n\r]|\A[ \t]|[ \t]\Z")


class MalformedRequest(Exception):
    """The request's header block breaks RFC 9113; the argument says how (never a header's value)."""


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    path: str  # with the query string
    authority: str
    headers: tuple[tuple[str, str], ...]  # the regular fields, in order


def parse_request_head(block: Iterable[tuple[bytes, bytes]]) -> RequestHead:
    """Check a request's header block and decode it (values as UTF-8, invalid octets replaced)."""
    pseudo: dict[bytes, bytes] = {}
    headers: list[tuple[str, str]] = []
    host: bytes | None = None
    for name, value in block:
        if value and _BAD_FIELD_VALUE.search(value):
            raise MalformedRequest(f"illegal octet or surrounding whitespace in the value of {name!r}")
        if name[:1] == b":":
            _add_pseudo(pseudo, name, value, after_regular=bool(headers))
            continue
        if name == b"host":
            if host is not None:
                raise MalformedRequest("more than one host field")
            host = value
        headers.append((_field_name(name, value), value.decode("utf-8", "replace")))
    _check_pseudo(pseudo, host)
    return RequestHead(
        method=pseudo[b":method"].decode("utf-8", "replace"),
        path=pseudo.get(b":path", b"").decode("utf-8", "replace"),
        authority=(pseudo.get(b":authority") or host or b"").decode("utf-8", "replace"),
        headers=tuple(headers),
    )


def _add_pseudo(pseudo: dict[bytes, bytes], name: bytes, value: bytes, *, after_regular: bool) -> None:
    if name not in _REQUEST_PSEUDO:
        raise MalformedRequest(f"pseudo-header field {name!r} in a request")
    if name in pseudo:
        raise MalformedRequest(f"duplicate pseudo-header field {name!r}")
    if after_regular:
        raise MalformedRequest(f"pseudo-header field {name!r} after a regular field")
    pseudo[name] = value


def _field_name(name: bytes, value: bytes) -> str:
    known = _KNOWN_NAMES.get(name)
    if known is not None:
        return known
    if not _FIELD_NAME.fullmatch(name):
        raise MalformedRequest(f"illegal field name {name!r}")
    if name in _CONNECTION_SPECIFIC:
        raise MalformedRequest(f"connection-specific field {name!r}")
    if name == b"te" and value.lower() != b"trailers":
        raise MalformedRequest("te other than trailers")
    return name.decode("ascii")


def _check_pseudo(pseudo: dict[bytes, bytes], host: bytes | None) -> None:
    method = pseudo.get(b":method")
    if method is None:
        raise MalformedRequest("no :method")
    if method == b"CONNECT" and b":protocol" not in pseudo:
        if b":scheme" in pseudo or b":path" in pseudo:
            raise MalformedRequest("ordinary CONNECT with :scheme or :path")
    else:
        if b":scheme" not in pseudo or b":path" not in pseudo:
            raise MalformedRequest("no :scheme or no :path")
        if not pseudo[b":path"]:
            raise MalformedRequest("empty :path")
        if b":protocol" in pseudo and method != b"CONNECT":
            raise MalformedRequest(":protocol outside CONNECT")
    authority = pseudo.get(b":authority")
    if authority is None and host is None:
        raise MalformedRequest("neither :authority nor host")
    if authority is not None and host is not None and authority != host:
        raise MalformedRequest(":authority and host differ")
