"""An HPACK encoder that never uses the dynamic table, so that each header's encoding can be computed once.

hpack's own encoder searches its tables and Huffman-codes every value on every request: half of what a push
costs in CPU (benchmarks/apns_clients.py). Push requests repeat the same few headers (topic, push type, JWT)
and add two that are unique (the device path and apns-id), so a header block is a join of cached encodings
plus two raw literals. The price is a few hundred bytes per request on the wire, which compression of the
JWT would have saved; HPACK (RFC 7541) allows an encoder to index nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hpack
from hpack.hpack import encode_integer
from hpack.table import HeaderTable

_MAX_CACHED = 512  # values like apns-expiration change every second; the cache is emptied when full
# RFC 7541 6.3: "dynamic table size update" to 0 — our table stays empty whatever the peer allows.
_TABLE_SIZE_ZERO = b"\x20"

_STATIC_FULL: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_FULL.setdefault((_name, _value), _index)
    _STATIC_NAME.setdefault(_name, _index)


def _integer(value: int, prefix_bits: int, flags: int) -> bytes:
    encoded = encode_integer(value, prefix_bits)
    encoded[0] |= flags
    return bytes(encoded)


def _string(value: bytes) -> bytes:
    return _integer(len(value), 7, 0x00) + value  # H bit clear: raw octets, no Huffman coding


def _literal(name: bytes, value: bytes, *, never_indexed: bool) -> bytes:
    flags = 0x10 if never_indexed else 0x00  # 6.2.3 never indexed, or 6.2.2 without indexing
    name_index = _STATIC_NAME.get(name)
    if name_index is not None:
        return _integer(name_index, 4, flags) + _string(value)
    return bytes([flags]) + _string(name) + _string(value)


def encode_header(name: bytes, value: bytes) -> bytes:
    index = _STATIC_FULL.get((name, value))
    if index is not None:
        return _integer(index, 7, 0x80)
    return _literal(name, value, never_indexed=False)


class StaticTableEncoder(hpack.Encoder):
    """Drop-in for `h2.connection.H2Connection.encoder`: static table and literals only, cached per header."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[tuple[bytes, bytes], bytes] = {}
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
                # Secrets and one-off values (device path, apns-id): never cached, never indexed.
                parts.append(_literal(name, value, never_indexed=True))
                continue
            encoded = cache.get((name, value))
            if encoded is None:
                if len(cache) >= _MAX_CACHED:
                    cache.clear()
                encoded = cache[(name, value)] = encode_header(name, value)
            parts.append(encoded)
        return b"".join(parts)
