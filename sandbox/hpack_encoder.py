"""HPACK encoding of the emulators' responses: static table and raw literals only, each field encoded once.

An emulator answers with a handful of fields (:status, content-type, content-length, apns-id, ...), half of
them different on every response. hpack's encoder searches both tables and maintains a dynamic table for
each of them; this one never indexes anything (RFC 7541 allows an encoder that does not), so a field that
repeats is a cached octet string and one that does not costs two small integers and its value.
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack.table import HeaderTable

_CACHED_FIELDS = (
    512  # repeated (name, value) pairs; content-length and retry-after vary, so emptied when full
)

_STATIC_FIELD: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_FIELD.setdefault((_name, _value), _index)
    _STATIC_NAME.setdefault(_name, _index)


def _integer(value: int, prefix_bits: int, flags: int) -> bytes:
    """RFC 7541 5.1."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(octets: bytes) -> bytes:
    return _integer(len(octets), 7, 0x00) + octets  # H bit clear: no Huffman coding


def encode_field(name: bytes, value: bytes, *, never_indexed: bool = False) -> bytes:
    """One field: a static-table index when it is there whole, else a literal (6.2.2 or 6.2.3)."""
    index = _STATIC_FIELD.get((name, value))
    if index is not None and not never_indexed:
        return _integer(index, 7, 0x80)
    flags = 0x10 if never_indexed else 0x00
    name_index = _STATIC_NAME.get(name)
    if name_index is not None:
        return _integer(name_index, 4, flags) + _string(value)
    return bytes((flags,)) + _string(name) + _string(value)


class ResponseEncoder:
    """Encodes header lists; names in `never_indexed` change on every response and are never cached."""

    def __init__(self, never_indexed: frozenset[str]) -> None:
        self.never_indexed = never_indexed
        self._fields: dict[tuple[str, str], bytes] = {}

    def encode(self, headers: Iterable[tuple[str, str]]) -> bytes:
        parts = []
        fields = self._fields
        for header in headers:
            encoded = fields.get(header)
            if encoded is None:
                name, value = header
                if name in self.never_indexed:
                    parts.append(encode_field(name.encode(), value.encode(), never_indexed=True))
                    continue
                if len(fields) >= _CACHED_FIELDS:
                    fields.clear()
                encoded = fields[header] = encode_field(name.encode(), value.encode())
            parts.append(encoded)
        return b"".join(parts)
