"""The client side of one HTTP/2 connection without I/O: requests in, bytes out, answers to a listener.

This replaces h2's `H2Connection` under `http2.Http2Connection`. h2 turns every frame into objects, runs a
state machine per stream and normalizes every header it sends: in a worker's fan-out profile, about half of
the push loop's CPU. A push client needs only part of RFC 9113, implemented here directly: the preface and
SETTINGS with their acknowledgement, PING, flow control both ways (answers' DATA is given back as it comes),
HEADERS with CONTINUATION both ways, RST_STREAM and GOAWAY. A server that breaks the protocol ends the
connection (`ProtocolViolation`), which fails its streams as a lost connection would. The sandbox's emulators
do the same for the server side (`sandbox/h2_connection.py`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, Protocol

import hpack
from h2.errors import ErrorCodes
from hpack.table import HeaderTable

from workers.providers.hpack_static import StaticTableEncoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65_535
MAX_WINDOW = (1 << 31) - 1
MAX_FRAME_SIZE = 16_384  # what we accept: the RFC's default, never raised
MAX_HEADER_BLOCK = 1 << 20  # HEADERS and CONTINUATIONs of one block, before decoding
MAX_STREAM_ID = (1 << 31) - 1

_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS, _PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE = range(9)
_CONTINUATION = 9
_END_STREAM = _ACK = 0x1
_END_HEADERS = 0x4
_PADDED = 0x8
_PRIORITY_FLAG = 0x20
_FRAME_HEAD = struct.Struct(">BHBBL")  # length (24 bits as 8 + 16), type, flags, stream id
_ENABLE_PUSH, _MAX_CONCURRENT_STREAMS, _INITIAL_WINDOW_SIZE, _MAX_FRAME_SIZE = 2, 3, 4, 5
_STATIC: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE
_STATIC_LENGTH = len(_STATIC)


class ProtocolViolation(Exception):
    """The server broke the protocol: a GOAWAY with `error_code` is queued and the connection must close."""

    def __init__(self, error_code: ErrorCodes, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code


class StreamsExhausted(Exception):
    """Every client stream id of the connection was used: another connection takes the request."""


class Listener(Protocol):
    def response_received(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    def data_received_on(self, stream_id: int, data: bytes) -> None: ...

    def stream_ended(self, stream_id: int) -> None: ...

    def stream_reset(self, stream_id: int, error_code: int) -> None: ...

    def settings_changed(self) -> None: ...

    def window_opened(self) -> None: ...

    def goaway_received(self, last_stream_id: int, error_code: int) -> None: ...


class _Stream:
    __slots__ = ("answered", "recv_window", "send_window")

    def __init__(self, send_window: int, recv_window: int) -> None:
        self.send_window = send_window
        self.recv_window = recv_window
        self.answered = False  # its final (non-1xx) response headers came


def _frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return _FRAME_HEAD.pack(length >> 16, length & 0xFFFF, frame_type, flags, stream_id) + payload


def error_name(code: int) -> str:
    """An RFC 9113 error code's name (`CANCEL`), or its number when it has none."""
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


class ClientConnection:
    """One connection's protocol state. `receive` raises `ProtocolViolation` after queueing a GOAWAY.

    A stream is open from `send_request` until its answer ends, it is reset either way, or the connection
    goes; the listener hears of each answer's headers, data and end, and of resets, SETTINGS, opened windows
    and GOAWAY."""

    __slots__ = (
        "_buffer",
        "_continuation",
        "_decoder",
        "_next_stream_id",
        "_outbound",
        "_receive_window",
        "_recv_consumed",
        "_recv_initial_window",
        "_recv_window",
        "_send_initial_window",
        "_send_window",
        "closed",
        "encoder",
        "listener",
        "max_concurrent_streams",
        "max_outbound_frame_size",
        "streams",
    )

    def __init__(self, listener: Listener, *, receive_window: int) -> None:
        self.listener = listener
        self.encoder = StaticTableEncoder()
        # hpack's decoder (a header table, some 1 KiB) only from the first block that `decode_plain` cannot
        # take: until then no block has touched the dynamic table, so a new decoder is in the same state.
        self._decoder: hpack.Decoder | None = None
        self.streams: dict[int, _Stream] = {}
        self.max_concurrent_streams = 100  # the server's, until its SETTINGS say (h2's assumption too)
        self.max_outbound_frame_size = MAX_FRAME_SIZE
        self._receive_window = receive_window
        self._recv_initial_window = DEFAULT_WINDOW  # until the server acknowledges our SETTINGS
        self._send_initial_window = DEFAULT_WINDOW  # the server's, for our DATA
        self._send_window = DEFAULT_WINDOW
        self._recv_window = DEFAULT_WINDOW + receive_window
        self._recv_consumed = 0  # connection window not yet given back
        self._next_stream_id = 1
        self._buffer = bytearray()
        self._continuation: tuple[int, bool, bytearray] | None = None  # stream, END_STREAM, block so far
        self._outbound: list[bytes] = []
        self.closed = False

    # -- sending ---------------------------------------------------------------------------------

    def initiate(self) -> None:
        """The preface, our SETTINGS (no server push; `receive_window` per stream) and the connection's own
        window raised by as much."""
        settings = struct.pack(">HLHL", _ENABLE_PUSH, 0, _INITIAL_WINDOW_SIZE, self._receive_window)
        self._outbound += [
            PREFACE,
            _frame(_SETTINGS, 0, 0, settings),
            _frame(_WINDOW_UPDATE, 0, 0, struct.pack(">L", self._receive_window)),
        ]

    def data_to_send(self) -> bytes:
        # The connection's window goes back in quarters, not after every answer.
        if self._recv_consumed >= self._receive_window // 4 and not self.closed:
            self._outbound.append(_frame(_WINDOW_UPDATE, 0, 0, struct.pack(">L", self._recv_consumed)))
            self._recv_window += self._recv_consumed
            self._recv_consumed = 0
        data = b"".join(self._outbound)
        self._outbound.clear()
        return data

    def send_request(self, headers: Iterable[Any], *, end_stream: bool) -> int:
        """Open a stream with these headers (HPACK-encoded here); its id. `StreamsExhausted` past the last."""
        stream_id = self._next_stream_id
        if stream_id > MAX_STREAM_ID or self.closed:
            raise StreamsExhausted()
        self._next_stream_id += 2
        self.streams[stream_id] = _Stream(self._send_initial_window, self._recv_initial_window)
        block = self.encoder.encode(headers)
        size = self.max_outbound_frame_size
        end = _END_STREAM if end_stream else 0
        if len(block) <= size:
            self._outbound.append(_frame(_HEADERS, end | _END_HEADERS, stream_id, block))
        else:
            chunks = [block[i : i + size] for i in range(0, len(block), size)]
            self._outbound.append(_frame(_HEADERS, end, stream_id, chunks[0]))
            for chunk in chunks[1:-1]:
                self._outbound.append(_frame(_CONTINUATION, 0, stream_id, chunk))
            self._outbound.append(_frame(_CONTINUATION, _END_HEADERS, stream_id, chunks[-1]))
        return stream_id

    def send_window(self, stream_id: int) -> int:
        """How many octets of DATA the stream may send now (the connection's window and its own)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return 0
        return min(self._send_window, stream.send_window, self.max_outbound_frame_size)

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool) -> None:
        """DATA within `send_window(stream_id)`, which the caller checked."""
        stream = self.streams[stream_id]
        stream.send_window -= len(data)
        self._send_window -= len(data)
        self._outbound.append(_frame(_DATA, _END_STREAM if end_stream else 0, stream_id, data))

    def reset_stream(self, stream_id: int, error_code: ErrorCodes) -> None:
        if self.streams.pop(stream_id, None) is not None and not self.closed:
            self._outbound.append(_frame(_RST_STREAM, 0, stream_id, struct.pack(">L", error_code)))

    def close_connection(self, error_code: ErrorCodes = ErrorCodes.NO_ERROR) -> None:
        """GOAWAY: the server opens no stream of its own (we allow no push), so the last one is 0."""
        if not self.closed:
            self._outbound.append(_frame(_GOAWAY, 0, 0, struct.pack(">LL", 0, error_code)))
            self.closed = True

    # -- receiving -------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Handle every complete frame in `data` (and what came before it), in order."""
        buffer = self._buffer
        buffer += data
        pos = 0
        try:
            pos = self._receive_frames(buffer)
        except ProtocolViolation as error:
            self.close_connection(error.error_code)
            raise
        finally:
            del buffer[:pos]

    def _receive_frames(self, buffer: bytearray) -> int:
        pos, end = 0, len(buffer)
        while end - pos >= 9:
            high, low, frame_type, flags, stream_id = _FRAME_HEAD.unpack_from(buffer, pos)
            length = high << 16 | low
            if length > MAX_FRAME_SIZE:
                raise ProtocolViolation(
                    ErrorCodes.FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE"
                )
            if end - pos - 9 < length:
                break
            payload = bytes(buffer[pos + 9 : pos + 9 + length])
            pos += 9 + length
            self._receive_frame(frame_type, flags, stream_id & 0x7FFFFFFF, payload)
        return pos

    def _receive_frame(self, frame_type: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuation is not None and frame_type != _CONTINUATION:
            raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "a header block was interrupted")
        if frame_type == _HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif frame_type == _DATA:
            self._on_data(flags, stream_id, payload)
        elif frame_type == _WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif frame_type == _CONTINUATION:
            self._on_continuation(flags, stream_id, payload)
        elif frame_type == _SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif frame_type == _PING:
            self._on_ping(flags, stream_id, payload)
        elif frame_type == _RST_STREAM:
            self._on_rst_stream(stream_id, payload)
        elif frame_type == _GOAWAY:
            self._on_goaway(stream_id, payload)
        elif frame_type == _PUSH_PROMISE:
            raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "PUSH_PROMISE with push disabled")
        # PRIORITY says nothing a client must act on; frames of unknown types are ignored (RFC 9113 5.5).

    # -- HEADERS and CONTINUATION ----------------------------------------------------------------

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & _PADDED:
            payload = _unpad(payload)
        if flags & _PRIORITY_FLAG:
            if len(payload) < 5:
                raise ProtocolViolation(ErrorCodes.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            payload = payload[5:]
        end_stream = bool(flags & _END_STREAM)
        if flags & _END_HEADERS:
            self._on_header_block(stream_id, payload, end_stream)
        else:
            self._continuation = (stream_id, end_stream, bytearray(payload))

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuation is None or self._continuation[0] != stream_id:
            raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        _, end_stream, block = self._continuation
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise ProtocolViolation(ErrorCodes.ENHANCE_YOUR_CALM, "header block too large")
        if flags & _END_HEADERS:
            self._continuation = None
            self._on_header_block(stream_id, bytes(block), end_stream)

    def _on_header_block(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        try:  # always decoded: the HPACK state is the connection's, whatever became of the stream
            headers = decode_plain(block)
            if headers is None:
                if self._decoder is None:
                    self._decoder = hpack.Decoder()
                decoded = self._decoder.decode(block, raw=True)
                headers = [(bytes(name), bytes(value)) for name, value in decoded]
        except hpack.HPACKError as error:
            raise ProtocolViolation(
                ErrorCodes.COMPRESSION_ERROR, f"undecodable header block: {type(error).__name__}"
            ) from None
        stream = self.streams.get(stream_id)
        if stream is None:
            self._check_known(stream_id)
            return  # a stream we reset, or one already over: its late frames mean nothing
        if not stream.answered:
            status = next((value for name, value in headers if name == b":status"), b"")
            if status.startswith(b"1") and not end_stream:
                return  # an informational response (RFC 9110 15.2): the final one follows
            stream.answered = True
            self.listener.response_received(stream_id, headers)
        elif not end_stream:
            raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "trailers without END_STREAM")
        if end_stream:
            self._end(stream_id)

    def _end(self, stream_id: int) -> None:
        del self.streams[stream_id]
        self.listener.stream_ended(stream_id)

    def _check_known(self, stream_id: int) -> None:
        if stream_id % 2 == 0 or stream_id >= self._next_stream_id:
            raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "a frame on a stream we never opened")

    # -- DATA and flow control -------------------------------------------------------------------

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)  # padding counts against the windows too
        self._recv_window -= size
        if self._recv_window < 0:
            raise ProtocolViolation(ErrorCodes.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self._recv_consumed += size
        stream = self.streams.get(stream_id)
        if stream is None:
            self._check_known(stream_id)
            return
        if not stream.answered:
            raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "DATA before the response's headers")
        stream.recv_window -= size
        if stream.recv_window < 0:
            raise ProtocolViolation(ErrorCodes.FLOW_CONTROL_ERROR, "DATA beyond a stream's window")
        data = _unpad(payload) if flags & _PADDED else payload
        if data:
            self.listener.data_received_on(stream_id, data)
        if flags & _END_STREAM:
            self._end(stream_id)
        elif size:
            # Answers are buffered whole, so the stream's window goes back at once.
            stream.recv_window += size
            self._outbound.append(_frame(_WINDOW_UPDATE, 0, stream_id, struct.pack(">L", size)))

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolViolation(ErrorCodes.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong length")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if increment == 0:
            raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        if stream_id == 0:
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ProtocolViolation(ErrorCodes.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                self._check_known(stream_id)
                return  # a stream that just closed: allowed and meaningless
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                raise ProtocolViolation(ErrorCodes.FLOW_CONTROL_ERROR, "a stream window above 2^31-1")
        self.listener.window_opened()

    # -- SETTINGS, PING, RST_STREAM, GOAWAY ------------------------------------------------------

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        _connection_frame(stream_id)
        if flags & _ACK:
            if payload:
                raise ProtocolViolation(
                    ErrorCodes.FRAME_SIZE_ERROR, "SETTINGS acknowledgement with a payload"
                )
            self._our_settings_acknowledged()
            return
        if len(payload) % 6:
            raise ProtocolViolation(ErrorCodes.FRAME_SIZE_ERROR, "SETTINGS of the wrong length")
        for offset in range(0, len(payload), 6):
            identifier, value = struct.unpack_from(">HL", payload, offset)
            self._apply_setting(identifier, value)
        self._outbound.append(_frame(_SETTINGS, _ACK, 0))
        self.listener.settings_changed()

    def _apply_setting(self, identifier: int, value: int) -> None:
        if identifier == _INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                raise ProtocolViolation(
                    ErrorCodes.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1"
                )
            delta, self._send_initial_window = value - self._send_initial_window, value
            for stream in self.streams.values():
                stream.send_window += delta
                if stream.send_window > MAX_WINDOW:
                    raise ProtocolViolation(ErrorCodes.FLOW_CONTROL_ERROR, "a stream window above 2^31-1")
            if delta > 0:
                self.listener.window_opened()
        elif identifier == _MAX_FRAME_SIZE:
            if not MAX_FRAME_SIZE <= value <= (1 << 24) - 1:
                raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
            self.max_outbound_frame_size = value
        elif identifier == _MAX_CONCURRENT_STREAMS:
            self.max_concurrent_streams = value
        elif identifier == _ENABLE_PUSH and value > 1:
            raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH other than 0 or 1")
        # The header table size binds an encoder that indexes; ours never does. The rest bind servers.

    def _our_settings_acknowledged(self) -> None:
        delta = self._receive_window - self._recv_initial_window
        self._recv_initial_window = self._receive_window
        for stream in self.streams.values():
            stream.recv_window += delta

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        _connection_frame(stream_id)
        if len(payload) != 8:
            raise ProtocolViolation(ErrorCodes.FRAME_SIZE_ERROR, "PING of the wrong length")
        if not flags & _ACK:
            self._outbound.append(_frame(_PING, _ACK, 0, payload))

    def _on_rst_stream(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolViolation(ErrorCodes.FRAME_SIZE_ERROR, "RST_STREAM of the wrong length")
        if stream_id == 0:
            raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if self.streams.pop(stream_id, None) is not None:
            self.listener.stream_reset(stream_id, int.from_bytes(payload, "big"))
        else:
            self._check_known(stream_id)

    def _on_goaway(self, stream_id: int, payload: bytes) -> None:
        _connection_frame(stream_id)
        if len(payload) < 8:
            raise ProtocolViolation(ErrorCodes.FRAME_SIZE_ERROR, "GOAWAY too short")
        last_stream_id, error_code = struct.unpack_from(">LL", payload)
        self.listener.goaway_received(last_stream_id & 0x7FFFFFFF, error_code)


def decode_plain(block: bytes) -> list[tuple[bytes, bytes]] | None:
    """A header block of static-table fields and raw literals that enter no table, decoded in one pass; None
    for any other (dynamic-table references or entries, Huffman-coded strings, a table size update), which
    hpack's decoder then takes whole. Such a block leaves the dynamic table as it was, so either decoder may
    take the next. Answers encoded as mdmq's emulators encode them (`hpack_static`) all go this way."""
    headers: list[tuple[bytes, bytes]] = []
    pos, end = 0, len(block)
    while pos < end:
        first = block[pos]
        if first & 0x80:  # RFC 7541 6.1: an indexed field, in the static table if its index is
            index, pos = _integer(block, pos, 7)
            if not 0 < index <= _STATIC_LENGTH:
                return None
            headers.append(_STATIC[index - 1])
            continue
        if first & 0xE0:  # 6.2.1 (enters the table) or 6.3 (table size update)
            return None
        index, pos = _integer(block, pos, 4)  # 6.2.2 without indexing, 6.2.3 never indexed
        if index > _STATIC_LENGTH:
            return None
        if index:
            name = _STATIC[index - 1][0]
        else:
            if pos >= end or block[pos] & 0x80:
                return None  # Huffman-coded
            name, pos = _string(block, pos)
        if pos >= end or block[pos] & 0x80:
            return None
        value, pos = _string(block, pos)
        headers.append((name, value))
    return headers


def _integer(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """RFC 7541 5.1: the integer at `pos` and the position after it."""
    mask = (1 << prefix_bits) - 1
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while shift <= 28:  # a longer HPACK integer is an attack, not a header
        if pos >= len(block):
            raise hpack.HPACKDecodingError("Truncated header block")
        octet = block[pos]
        pos += 1
        value += (octet & 0x7F) << shift
        if not octet & 0x80:
            return value, pos
        shift += 7
    raise hpack.HPACKDecodingError("HPACK integer too large")


def _string(block: bytes, pos: int) -> tuple[bytes, int]:
    """RFC 7541 5.2: the raw (not Huffman-coded) string at `pos` and the position after it."""
    length, pos = _integer(block, pos, 7)
    end = pos + length
    if end > len(block):
        raise hpack.HPACKDecodingError("Truncated header block")
    return bytes(block[pos:end]), end


def _connection_frame(stream_id: int) -> None:
    if stream_id != 0:
        raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "a connection-level frame on a stream")


def _unpad(payload: bytes) -> bytes:
    if not payload or payload[0] >= len(payload):
        raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]
