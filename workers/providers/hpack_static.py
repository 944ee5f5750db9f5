"""An HPACK encoder that never uses the dynamic table, so that each header's encoding is computed once.

hpack's own encoder searches its tables and Huffman-codes every value of every header block: a large share of
a push's CPU (benchmarks/apns_clients.py measures it). Push requests (and the emulators' responses) repeat the
same few headers and add one or two that are unique, so a header block here is a join of cached encodings plus
raw literals for the unique ones. The price is a few hundred bytes per request on the wire, which compression
would have saved; RFC 7541 allows an encoder to index nothing. mdmq's HTTP/2 connections use it for requests,
the sandbox's emulators for responses.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import hpack
from hpack.hpack import encode_integer
from hpack.table import HeaderTable

_MAX_CACHED = 512  # values like apns-expiration change every second; a cache is emptied when full
# RFC 7541 6.3: "dynamic table size update" to 0 — our table stays empty whatever the peer allows.
_TABLE_SIZE_ZERO = b"\x20"

_NO_NAMES: frozenset[str | bytes] = frozenset()

_STATIC_FULL: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_FULL.setdefault((_name, _value), _index)
    _STATIC_NAME.setdefault(_name, _index)


def _integer(value: int, prefix_bits: int, flags: int) -> bytes:
    # RFC 7541 5.1; a value within the prefix (nearly all of them: lengths and indexes) without hpack's
    # `encode_integer`, which logs every call at debug level.
    if value < (1 << prefix_bits) - 1:
        return bytes((value | flags,))
    encoded = encode_integer(value, prefix_bits)
    encoded[0] |= flags
    return bytes(encoded)


def _string(value: bytes) -> bytes:
    return _integer(len(value), 7, 0x00) + value  # H bit clear: raw octets, no Huffman coding


def _octets(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


def _text(octets: str | bytes) -> str:
    return octets.decode() if isinstance(octets, bytes) else octets


def encode_literal(name: bytes, value: bytes, *, never_indexed: bool) -> bytes:
    """A literal field, its name indexed when the static table has it: RFC 7541 6.2.3 when `never_indexed`
    (intermediaries must not index it either), else 6.2.2 (without indexing)."""
    flags = 0x10 if never_indexed else 0x00
    name_index = _STATIC_NAME.get(name)
    if name_index is not None:
        return _integer(name_index, 4, flags) + _string(value)
    return bytes([flags]) + _string(name) + _string(value)


def encode_header(name: bytes, value: bytes) -> bytes:
    """A static-table index when the table has the whole field (6.1), else a literal without indexing."""
    index = _STATIC_FULL.get((name, value))
    if index is not None:
        return _integer(index, 7, 0x80)
    return encode_literal(name, value, never_indexed=False)


# The encodings of the process's encoders, one cache for each set of never-indexed names (an encoding is
# the same whatever the connection, but a name never indexed by one encoder must not be found cached by it).
# Shared by every connection of every thread, rather than one cache a connection: with an organization a
# connection, 1,000 organizations' connections each kept the same few headers' encodings (some 1 KB each).
# A dict's get, set and clear are each atomic under the GIL: a lost race costs one encoding more.
_CACHES: dict[frozenset[str | bytes], dict[tuple[str | bytes, str | bytes], bytes]] = {}


class StaticTableEncoder:
    """`hpack.Encoder.encode` with the static table and literals only, cached per header. It holds no header
    table and no Huffman coder (hpack's encoder does, some 1 KiB), and shares its cache with the process's
    other encoders of the same `never_indexed`: every connection has one.

    Headers are (name, value) pairs of `str` or `bytes`. An `hpack.NeverIndexedHeaderTuple`, or a header
    whose name is in `never_indexed`, is a never-indexed literal and is not cached: secrets, and values that
    change on every block (a device path, an apns-id, a content-length)."""

    __slots__ = ("_announced", "_cache", "never_indexed")

    def __init__(self, never_indexed: Collection[str | bytes] = ()) -> None:
        # Both spellings, so that a header matches whether it gives its name as str or as bytes.
        self.never_indexed = (
            frozenset(n for name in never_indexed for n in (_octets(name), _text(name)))
            if never_indexed
            else _NO_NAMES
        )
        self._cache = _CACHES.setdefault(self.never_indexed, {})
        self._announced = False

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        parts: list[bytes] = []
        if not self._announced:
            parts.append(_TABLE_SIZE_ZERO)
            self._announced = True
        cache = self._cache
        for header in headers:
            name, value = header[0], header[1]
            if isinstance(header, hpack.NeverIndexedHeaderTuple):
                parts.append(encode_literal(_octets(name), _octets(value), never_indexed=True))
                continue
            encoded = cache.get((name, value))
            if encoded is None:
                if name in self.never_indexed:
                    parts.append(encode_literal(_octets(name), _octets(value), never_indexed=True))
                    continue
                if len(cache) >= _MAX_CACHED:
                    cache.clear()
                encoded = cache[(name, value)] = encode_header(_octets(name), _octets(value))
            parts.append(encoded)
        return b"".join(parts)
