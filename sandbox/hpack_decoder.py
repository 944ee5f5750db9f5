"""HPACK decoding for the emulators: one pass per header block, repeated Huffman-coded literals decoded once.

h2-based clients (httpx, aioapns) and nghttp2 never enter `authorization` into the dynamic table, so the
provider JWT arrives as the same ~200-byte Huffman-coded literal on every request, and hpack's pure-Python
Huffman decoder spent more CPU on it than the emulator spent on everything else. Huffman decoding is a pure
function of the encoded octets: a literal that the client does not index, and will therefore send again, is
decoded once per connection and looked up by its octets after that. Literals entered into the dynamic table
are decoded as usual; the client refers to them by index from then on.

Fields come out as plain `(name, value)` octet tuples: nothing downstream needs hpack's `HeaderTuple`.
"""

from __future__ import annotations

import hpack
from hpack.table import HeaderTable

from sandbox.huffman import decode_huffman

DEFAULT_MAX_HEADER_LIST_SIZE = 1 << 16  # decoded octets (RFC 7541 4.1 sizes) one header block may expand to
_CACHED_LITERALS = 256  # distinct non-indexed literals kept per connection; emptied when full
_CACHED_OCTETS = 1024  # longer literals are one-offs, not credentials worth keeping
_ENTRY_OVERHEAD = 32  # RFC 7541 4.1: an entry's size is its name, its value and 32 octets
_MAX_INTEGER_BITS = 28  # a longer HPACK integer is an attack, not a header
_STATIC = HeaderTable.STATIC_TABLE
_STATIC_LENGTH = len(_STATIC)

Header = tuple[bytes, bytes]


def _integer(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """RFC 7541 5.1: the integer at `pos` and the position after it."""
    mask = (1 << prefix_bits) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while shift <= _MAX_INTEGER_BITS:
        if pos >= len(data):
            raise hpack.HPACKDecodingError("Truncated header block")
        octet = data[pos]
        pos += 1
        value += (octet & 0x7F) << shift
        if not octet & 0x80:
            return value, pos
        shift += 7
    raise hpack.HPACKDecodingError("HPACK integer too large")


class CachingDecoder:
    """The HPACK decoding context of one connection; errors are `hpack.HPACKDecodingError`s.

    The dynamic table is hpack's own `HeaderTable`. `max_allowed_table_size` is what we advertised in
    SETTINGS_HEADER_TABLE_SIZE (we never change the default).
    """

    def __init__(self, max_header_list_size: int = DEFAULT_MAX_HEADER_LIST_SIZE) -> None:
        self.header_table = HeaderTable()
        self.max_header_list_size = max_header_list_size
        self.max_allowed_table_size = self.header_table.maxsize
        self._literals: dict[bytes, bytes] = {}

    def decode(self, data: bytes) -> list[Header]:
        """The fields of one complete header block, as raw octets, in order."""
        headers: list[Header] = []
        inflated_size = 0
        pos, end = 0, len(data)
        while pos < end:
            first = data[pos]
            if first & 0x80:  # 6.1 indexed field; most indexes fit in the first octet
                if first != 0xFF:
                    index, pos = first & 0x7F, pos + 1
                else:
                    index, pos = _integer(data, pos, 7)
                header = self._entry(index)
            elif first & 0x40:  # 6.2.1 literal, entered into the dynamic table
                header, pos = self._literal(data, pos, 6, cache=False)
                self.header_table.add(*header)
            elif first & 0x20:  # 6.3 dynamic table size update, only before the first field
                if headers:
                    raise hpack.HPACKDecodingError("Table size update not at the start of the block")
                pos = self._resize(data, pos)
                continue
            else:  # 6.2.2 without indexing, 6.2.3 never indexed: the client will send it again
                header, pos = self._literal(data, pos, 4, cache=True)
            headers.append(header)
            inflated_size += len(header[0]) + len(header[1]) + _ENTRY_OVERHEAD
            if inflated_size > self.max_header_list_size:
                raise hpack.OversizedHeaderListError(
                    f"A header list larger than {self.max_header_list_size} has been received"
                )
        if self.header_table.maxsize > self.max_allowed_table_size:
            raise hpack.InvalidTableSizeError("Encoder did not shrink table size to within the max")
        return headers

    def _entry(self, index: int) -> Header:
        if 0 < index <= _STATIC_LENGTH:
            return _STATIC[index - 1]
        dynamic = self.header_table.dynamic_entries
        if _STATIC_LENGTH < index <= _STATIC_LENGTH + len(dynamic):
            return dynamic[index - _STATIC_LENGTH - 1]
        raise hpack.InvalidTableIndexError(f"Invalid table index {index}")

    def _literal(self, data: bytes, pos: int, prefix_bits: int, *, cache: bool) -> tuple[Header, int]:
        index, pos = _integer(data, pos, prefix_bits)
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = self._string(data, pos, cache)
        value, pos = self._string(data, pos, cache)
        return (name, value), pos

    def _string(self, data: bytes, pos: int, cache: bool) -> tuple[bytes, int]:
        """RFC 7541 5.2: the string at `pos` and the position after it."""
        if pos >= len(data):
            raise hpack.HPACKDecodingError("Truncated header block")
        huffman = data[pos] & 0x80
        length, pos = _integer(data, pos, 7)
        end = pos + length
        if end > len(data):
            raise hpack.HPACKDecodingError("Truncated header block")
        octets = data[pos:end]
        if not huffman:
            return octets, end
        if not cache or length > _CACHED_OCTETS:
            return decode_huffman(octets), end
        decoded = self._literals.get(octets)
        if decoded is None:
            if len(self._literals) >= _CACHED_LITERALS:
                self._literals.clear()
            decoded = self._literals[octets] = decode_huffman(octets)
        return decoded, end

    def _resize(self, data: bytes, pos: int) -> int:
        new_size, pos = _integer(data, pos, 5)
        if new_size > self.max_allowed_table_size:
            raise hpack.InvalidTableSizeError("Encoder exceeded max allowable table size")
        self.header_table.maxsize = new_size
        return pos
