"""The static-table HPACK encoder round-trips through hpack's Decoder: on its own, and inside the client
connection that sends mdmq's pushes. The emulators' responses: tests/unit/sandbox/test_sandbox_hpack.py."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import hpack
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_h2_client import Recorder
from workers.providers.h2_client import ClientConnection, decode_plain
from workers.providers.hpack_static import StaticTableEncoder

# Names with and without a static-table entry; values from the static table among random ones.
NAMES = [
    b":method",
    b":path",
    b":status",
    b"content-type",
    b"authorization",
    b"apns-id",
    b"apns-topic",
    b"x-y",
]
VALUES = st.one_of(st.sampled_from([b"GET", b"POST", b"/", b"200", b"404", b""]), st.binary(max_size=300))
# (name, value, never indexed, given as str)
FIELD = st.tuples(st.sampled_from(NAMES), VALUES, st.booleans(), st.booleans())
NEVER_INDEXED_NAMES: frozenset[str | bytes] = frozenset({"apns-id", b"x-y"})


def _header(name: bytes, value: bytes, never: bool, as_str: bool) -> tuple[str | bytes, str | bytes]:
    pair: tuple[str | bytes, str | bytes] = (name, value)
    if as_str:
        pair = (name.decode(), value.decode("latin-1"))
    return hpack.NeverIndexedHeaderTuple(*pair) if never else pair


def _octets(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


@settings(max_examples=200, deadline=None)
@given(blocks=st.lists(st.lists(FIELD, max_size=10), min_size=1, max_size=6))
def test_hpack_decodes_what_it_encodes_and_nothing_is_indexed(
    blocks: list[list[tuple[bytes, bytes, bool, bool]]],
) -> None:
    encoder, decoder = StaticTableEncoder(never_indexed=NEVER_INDEXED_NAMES), hpack.Decoder()
    for fields in blocks * 2:  # the second time, from the cache
        headers = [_header(*field) for field in fields]
        decoded = decoder.decode(encoder.encode(headers), raw=True)
        assert [tuple(h) for h in decoded] == [(_octets(n), _octets(v)) for n, v in headers]
        for header, (name, _, never, _) in zip(decoded, fields, strict=True):
            unique = never or name in (b"apns-id", b"x-y")
            assert isinstance(header, hpack.NeverIndexedHeaderTuple) is unique
        assert not decoder.header_table.dynamic_entries


@settings(max_examples=200, deadline=None)
@given(blocks=st.lists(st.lists(FIELD, max_size=10), min_size=1, max_size=6))
def test_the_clients_one_pass_decoder_reads_static_blocks_and_leaves_the_rest_to_hpack(
    blocks: list[list[tuple[bytes, bytes, bool, bool]]],
) -> None:
    static, indexing = StaticTableEncoder(never_indexed=NEVER_INDEXED_NAMES), hpack.Encoder()
    decoder = hpack.Decoder()
    # The encoder's first block announces its table size of 0: an update the one-pass decoder leaves to hpack.
    assert decode_plain(static.encode([])) is None
    for fields in blocks:
        headers = [_header(*field) for field in fields]
        expected = [(_octets(n), _octets(v)) for n, v in headers]
        assert decode_plain(static.encode(headers)) == expected
        # hpack's own encoder indexes and Huffman-codes: such a block is hpack's to decode (None), unless
        # it happens to hold nothing of either.
        block = indexing.encode(headers)
        plain = decode_plain(block)
        assert [tuple(h) for h in decoder.decode(block, raw=True)] == expected
        assert plain is None or plain == expected


def test_a_full_cache_is_emptied_and_encoding_goes_on() -> None:
    encoder, decoder = StaticTableEncoder(), hpack.Decoder()
    for block in range(4):
        headers = [(b"x-n", str(block * 300 + i).encode()) for i in range(300)]
        assert decoder.decode(encoder.encode(headers), raw=True) == headers


def test_requests_of_the_client_connection_reach_an_h2_server_as_sent() -> None:
    client = ClientConnection(Recorder(), receive_window=1 << 24)
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    client.initiate()
    server.initiate_connection()
    sent: dict[int, list[tuple[bytes, bytes]]] = {}
    for n in range(40):
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            hpack.NeverIndexedHeaderTuple(b":path", f"/3/device/{n:064x}".encode()),
            (b":authority", b"api.push.apple.com"),
            (b"apns-topic", b"com.apple.mgmt.External.0f"),
            (b"apns-push-type", b"mdm"),
            hpack.NeverIndexedHeaderTuple(b"apns-id", f"{n:032x}".encode()),
            # Past one frame's 16,384 octets every tenth time: the block goes on in CONTINUATION frames.
            (b"x-padding", b"p" * (20_000 if n % 10 == 9 else n)),
        ]
        sent[client.send_request(headers, end_stream=True)] = headers
    events = server.receive_data(client.data_to_send())
    received = {e.stream_id: e.headers for e in events if isinstance(e, h2.events.RequestReceived)}
    assert received == sent
    for stream_id, headers in received.items():
        flags = [isinstance(h, hpack.NeverIndexedHeaderTuple) for h in headers]
        assert flags == [isinstance(h, hpack.NeverIndexedHeaderTuple) for h in sent[stream_id]]
    assert not server.decoder.header_table.dynamic_entries
