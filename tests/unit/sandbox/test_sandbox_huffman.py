"""The emulators' byte-at-a-time Huffman decoder agrees with hpack's, on valid and invalid input alike."""

from __future__ import annotations

import hpack
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman as hpack_decode_huffman
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.huffman import decode_huffman

ENCODER = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decodes_what_was_encoded(text: bytes) -> None:
    assert decode_huffman(ENCODER.encode(text)) == text


@settings(max_examples=1000, deadline=None)
@given(st.binary(min_size=1, max_size=6))
def test_arbitrary_octets_decode_or_fail_as_with_hpack(octets: bytes) -> None:
    try:
        expected: bytes | None = hpack_decode_huffman(octets)
    except hpack.HPACKDecodingError:
        expected = None
    if expected is None:
        with pytest.raises(hpack.HPACKDecodingError):
            decode_huffman(octets)
    else:
        assert decode_huffman(octets) == expected


@pytest.mark.parametrize(
    "octets",
    [
        pytest.param(b"\xff\xff\xff\xff", id="eos"),
        pytest.param(ENCODER.encode(b"a") + b"\xff", id="padding-of-8-bits-or-more"),
        pytest.param(b"\x00", id="padding-not-ones"),  # "0" is 00000, then three zero bits
    ],
)
def test_eos_and_bad_padding_are_decoding_errors(octets: bytes) -> None:
    with pytest.raises(hpack.HPACKDecodingError):
        decode_huffman(octets)
