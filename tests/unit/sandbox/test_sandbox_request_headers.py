"""The RFC 9113 request-header rules the emulators enforce themselves."""

from __future__ import annotations

import pytest

from sandbox.request_headers import MalformedRequest, parse_request_head

PSEUDO = [
    (b":method", b"POST"),
    (b":scheme", b"https"),
    (b":authority", b"api.push.apple.com"),
    (b":path", b"/x"),
]


def test_a_well_formed_request() -> None:
    head = parse_request_head([*PSEUDO, (b"apns-topic", b"com.example"), (b"x-custom", b"caf\xc3\xa9")])
    assert (head.method, head.path, head.authority) == ("POST", "/x", "api.push.apple.com")
    assert head.headers == (("apns-topic", "com.example"), ("x-custom", "café"))


def test_host_stands_in_for_a_missing_authority() -> None:
    head = parse_request_head([*PSEUDO[:2], PSEUDO[3], (b"host", b"example.com")])
    assert head.authority == "example.com"


@pytest.mark.parametrize(
    "block",
    [
        pytest.param([*PSEUDO, (b"Apns-Topic", b"x")], id="uppercase-name"),
        pytest.param([*PSEUDO, (b"bad name", b"x")], id="space-in-name"),
        pytest.param([*PSEUDO, (b"x:y", b"x")], id="colon-in-name"),
        pytest.param([*PSEUDO, (b"", b"x")], id="empty-name"),
        pytest.param([*PSEUDO, (b"x-a", b"a\r\nb")], id="crlf-in-value"),
        pytest.param([*PSEUDO, (b"x-a", b"a\x00")], id="nul-in-value"),
        pytest.param([*PSEUDO, (b"x-a", b" a")], id="leading-space"),
        pytest.param([*PSEUDO, (b"x-a", b"a\t")], id="trailing-tab"),
        pytest.param([*PSEUDO, (b"connection", b"keep-alive")], id="connection-specific"),
        pytest.param([*PSEUDO, (b"te", b"gzip")], id="te-not-trailers"),
        pytest.param([*PSEUDO, (b":method", b"GET")], id="duplicate-pseudo"),
        pytest.param([*PSEUDO[:3], (b"x-a", b"1"), PSEUDO[3]], id="pseudo-after-regular"),
        pytest.param([*PSEUDO, (b":status", b"200")], id="response-pseudo"),
        pytest.param([*PSEUDO, (b":custom", b"1")], id="unknown-pseudo"),
        pytest.param(PSEUDO[1:], id="no-method"),
        pytest.param([*PSEUDO[:3]], id="no-path"),
        pytest.param([*PSEUDO[:3], (b":path", b"")], id="empty-path"),
        pytest.param([*PSEUDO[:2], PSEUDO[3]], id="no-authority-or-host"),
        pytest.param([*PSEUDO, (b"host", b"other.example")], id="host-differs"),
        pytest.param([*PSEUDO, (b"host", b"api.push.apple.com")] * 1 + [(b"host", b"x")], id="two-hosts"),
        pytest.param([*PSEUDO, (b":protocol", b"websocket")], id="protocol-outside-connect"),
        pytest.param(
            [(b":method", b"CONNECT"), (b":authority", b"a:1"), (b":path", b"/")], id="connect-path"
        ),
    ],
)
def test_malformed_requests(block: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(MalformedRequest):
        parse_request_head(block)
