"""HPACK in the emulators: the caching decoder agrees with hpack's; responses, encoded by mdmq's static-table
encoder, decode with hpack's."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sandbox.hpack_decoder import CachingDecoder
from sandbox.http2 import _PER_RESPONSE
from workers.providers.hpack_static import StaticTableEncoder

NAMES = [b":path", b":method", b"authorization", b"apns-id", b"apns-topic", b"x-custom", b"content-type"]
field = st.tuples(st.sampled_from(NAMES), st.binary(max_size=300), st.booleans())
block = st.tuples(st.lists(field, max_size=8), st.booleans())


# Found by Hypothesis: repeating the six-field block evicts `:path: \x00`, so each encoding of it differs.
_AUTH, _METHOD, _PATH = b"authorization", b":method", b":path"
_SIX = [
    (_PATH, b"\0"),
    (_AUTH, b"\0\0\0"),
    (_PATH, b""),
    (_METHOD, b"\0\0"),
    (_AUTH, b"\0"),
    (_AUTH, b"\0\0"),
]
EVICTING = [
    ([(name, value, False) for name, value in fields], False)
    for fields in ([(_METHOD, b"\0\0")], _SIX, [(_PATH, b"\0"), (_METHOD, b"")])
]


@settings(max_examples=200, deadline=None)
@given(blocks=st.lists(block, min_size=1, max_size=6), table_size=st.sampled_from([0, 64, 256, 4096]))
@example(blocks=EVICTING, table_size=256)
def test_decodes_what_hpack_decodes_and_keeps_the_same_table(
    blocks: list[tuple[list[tuple[bytes, bytes, bool]], bool]], table_size: int
) -> None:
    encoder, reference, ours = hpack.Encoder(), hpack.Decoder(), CachingDecoder()
    encoder.header_table_size = table_size
    for fields, huffman in blocks:
        headers = [hpack.NeverIndexedHeaderTuple(n, v) if never else (n, v) for n, v, never in fields]
        for _ in range(2):  # the second time, non-indexed literals come from the cache
            # Every block the encoder emits must reach both decoders: encoding changes the encoder's table.
            data = encoder.encode(headers, huffman=huffman)
            assert ours.decode(data) == [tuple(h) for h in reference.decode(data, raw=True)]
            assert ours.header_table.dynamic_entries == reference.header_table.dynamic_entries


def test_a_block_indexing_past_the_dynamic_table_is_refused_by_both_decoders() -> None:
    """The exact blocks the property test once fed after dropping one the encoder had emitted: the decoders
    stay in step with each other (not with the encoder) and both refuse index 67, one past their 5 entries."""
    blocks = [
        b"?\xe1\x01B\x02\x00\x00",
        b"\xbe",
        b"D\x01\x00W\x03\x00\x00\x00D\x00\xc1W\x01\x00W\x02\x00\x00",
        b"\xc2\xc1\xc0B\x02\x00\x00\xc0\xbf",
        b"\xc2B\x00",
    ]
    reference, ours = hpack.Decoder(), CachingDecoder()
    for data in blocks:
        assert ours.decode(data) == [tuple(h) for h in reference.decode(data, raw=True)]
        assert ours.header_table.dynamic_entries == reference.header_table.dynamic_entries
    assert len(ours.header_table.dynamic_entries) == 5
    for decoder in (ours, reference):
        with pytest.raises(hpack.InvalidTableIndexError, match="index 67"):
            decoder.decode(b"\xc3\xbe")


def test_a_cached_literal_is_keyed_by_its_octets() -> None:
    encoder, decoder = hpack.Encoder(), CachingDecoder()
    first = [hpack.NeverIndexedHeaderTuple(b"authorization", b"bearer one")]
    second = [hpack.NeverIndexedHeaderTuple(b"authorization", b"bearer two")]
    assert decoder.decode(encoder.encode(first)) == [(b"authorization", b"bearer one")]
    assert decoder.decode(encoder.encode(second)) == [(b"authorization", b"bearer two")]
    assert decoder.decode(encoder.encode(first)) == [(b"authorization", b"bearer one")]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        pytest.param(b"\x80", hpack.InvalidTableIndexError, id="index-0"),
        pytest.param(b"\xbe", hpack.InvalidTableIndexError, id="index-past-the-tables"),
        pytest.param(b"\x04\x05/ab", hpack.HPACKDecodingError, id="truncated-value"),
        pytest.param(b"\x00", hpack.HPACKDecodingError, id="truncated-name"),
        pytest.param(b"\xff\xff\xff\xff\xff\xff\xff", hpack.HPACKDecodingError, id="endless-integer"),
        pytest.param(b"\x3f\xe2\x1f", hpack.InvalidTableSizeError, id="table-larger-than-allowed"),
        pytest.param(b"\x82\x20", hpack.HPACKDecodingError, id="size-update-after-a-field"),
    ],
)
def test_malformed_blocks_are_decoding_errors(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        CachingDecoder().decode(data)


def test_a_header_list_above_the_limit_is_refused() -> None:
    data = hpack.Encoder().encode([(b"x-big", b"v" * 200)] * 3)
    with pytest.raises(hpack.OversizedHeaderListError):
        CachingDecoder(max_header_list_size=500).decode(data)


def test_responses_decode_to_what_was_encoded_and_per_response_fields_are_never_indexed() -> None:
    encoder, decoder, ours = (
        StaticTableEncoder(never_indexed=_PER_RESPONSE),
        hpack.Decoder(),
        CachingDecoder(),
    )
    headers = [(":status", "200"), ("apns-id", "a" * 200), ("content-type", "application/json"), ("x-y", "z")]
    for first in (True, False):
        data = encoder.encode(headers)
        decoded = list(decoder.decode(data, raw=True))
        assert [(h[0].decode(), h[1].decode()) for h in decoded] == headers
        assert ours.decode(data) == [tuple(h) for h in decoded]
        assert isinstance(decoded[1], hpack.NeverIndexedHeaderTuple)
        # The first block says the dynamic table is 0 octets; ":status: 200" is entry 8 of the static table.
        assert data[: 2 if first else 1] == (b"\x20\x88" if first else b"\x88")
