"""The server side of one HTTP/2 connection without I/O: bytes in, calls to a listener out, bytes to send.

This replaces h2's `H2Connection` in the emulators. h2 turns every frame into objects, runs two state machines
and validates through generator chains: about 200 µs of CPU per push, several times what answering it costs.
The emulators need only the server side of RFC 9113, so this implements that directly: SETTINGS and their
acknowledgement, PING, flow control both ways (inbound DATA is given back at once), CONTINUATION, stream
states and limits, RST_STREAM and GOAWAY. What a client gets wrong is answered as RFC 9113 says: a stream
error (RST_STREAM) or a connection error (GOAWAY, then the caller closes the connection).
"""

from __future__ import annotations

import struct
from typing import Protocol

import hpack
from h2.errors import ErrorCodes

from sandbox.hpack_decoder import CachingDecoder, Header

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65_535
MAX_WINDOW = (1 << 31) - 1
MAX_FRAME_SIZE = 16_384  # what we accept: the RFC's default, never raised
MAX_HEADER_BLOCK = 1 << 20  # HEADERS and CONTINUATIONs of one block, before decoding
_REMEMBERED_RESETS = 1024  # streams we reset, whose late frames are ignored (RFC 9113 5.1, "closed")

_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS, _PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE = range(9)
_CONTINUATION = 9
_END_STREAM = _ACK = 0x1
_END_HEADERS = 0x4
_PADDED = 0x8
_PRIORITY_FLAG = 0x20
_FRAME_HEAD = struct.Struct(">BHBBL")  # length (24 bits as 8 + 16), type, flags, stream id

_HEADER_TABLE_SIZE, _ENABLE_PUSH, _MAX_CONCURRENT_STREAMS, _INITIAL_WINDOW_SIZE, _MAX_FRAME_SIZE = (
    1,
    2,
    3,
    4,
    5,
)


class ProtocolViolation(Exception):
    """The client broke the protocol: a GOAWAY with `error_code` is queued and the connection must close."""

    def __init__(self, error_code: ErrorCodes, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code


class _StreamError(Exception):
    def __init__(self, stream_id: int, error_code: ErrorCodes) -> None:
        super().__init__(stream_id, error_code)
        self.stream_id = stream_id
        self.error_code = error_code


class StreamClosed(Exception):
    """We tried to send on a stream that is closed (the client reset it, or it is finished)."""


class Listener(Protocol):
    def request_received(self, stream_id: int, headers: list[Header], end_stream: bool) -> None: ...

    def data_received_on(self, stream_id: int, data: bytes, end_stream: bool) -> None: ...

    def stream_reset(self, stream_id: int) -> None: ...

    def window_opened(self, stream_id: int) -> None: ...  # 0: the connection's window

    def goaway_received(self) -> None: ...


class _Stream:
    __slots__ = ("local_closed", "recv_window", "remote_closed", "send_window")

    def __init__(self, send_window: int, recv_window: int, remote_closed: bool) -> None:
        self.send_window = send_window
        self.recv_window = recv_window
        self.remote_closed = remote_closed
        self.local_closed = False


def _frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return _FRAME_HEAD.pack(length >> 16, length & 0xFFFF, frame_type, flags, stream_id) + payload


class ServerConnection:
    """One connection's protocol state. `receive` may raise `ProtocolViolation` after queueing a GOAWAY."""

    def __init__(self, listener: Listener, *, max_concurrent_streams: int, initial_window: int) -> None:
        self.listener = listener
        self.decoder = CachingDecoder()
        self.max_concurrent_streams = max_concurrent_streams
        self.highest_inbound_stream_id = 0
        self.max_outbound_frame_size = MAX_FRAME_SIZE
        self.streams: dict[int, _Stream] = {}
        self._reset_by_us: set[int] = set()
        self._initial_window = initial_window  # ours, for the client's DATA, once acknowledged
        self._recv_initial_window = DEFAULT_WINDOW  # until the client acknowledges our SETTINGS
        self._send_initial_window = DEFAULT_WINDOW  # the client's, for our DATA
        self._send_window = DEFAULT_WINDOW
        self._recv_window = DEFAULT_WINDOW + initial_window
        self._recv_consumed = 0  # connection window not yet given back
        self._buffer = bytearray()
        self._preface_seen = False
        self._continuation: tuple[int, bool, bytearray] | None = None  # stream, END_STREAM, block so far
        self._outbound: list[bytes] = []
        self.closed = False

    # -- sending ---------------------------------------------------------------------------------

    def initiate(self) -> None:
        settings = struct.pack(
            ">HLHL",
            _MAX_CONCURRENT_STREAMS,
            self.max_concurrent_streams,
            _INITIAL_WINDOW_SIZE,
            self._initial_window,
        )
        self._outbound.append(_frame(_SETTINGS, 0, 0, settings))
        self._outbound.append(_frame(_WINDOW_UPDATE, 0, 0, struct.pack(">L", self._initial_window)))

    def data_to_send(self) -> bytes:
        # The connection's window goes back in quarters, not after every batch; nothing may follow a GOAWAY.
        if self._recv_consumed >= self._initial_window // 4 and not self.closed:
            self._outbound.append(_frame(_WINDOW_UPDATE, 0, 0, struct.pack(">L", self._recv_consumed)))
            self._recv_window += self._recv_consumed
            self._recv_consumed = 0
        data = b"".join(self._outbound)
        self._outbound.clear()
        return data

    def send_headers(self, stream_id: int, block: bytes, *, end_stream: bool) -> None:
        stream = self._sendable(stream_id)
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
        if end_stream:
            self._close_local(stream_id, stream)

    def send_window(self, stream_id: int) -> int:
        stream = self.streams.get(stream_id)
        return min(self._send_window, stream.send_window) if stream is not None else 0

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool) -> None:
        stream = self._sendable(stream_id)
        if len(data) > min(self.send_window(stream_id), self.max_outbound_frame_size):
            raise ValueError("DATA beyond the flow-control window or the frame size")
        stream.send_window -= len(data)
        self._send_window -= len(data)
        self._outbound.append(_frame(_DATA, _END_STREAM if end_stream else 0, stream_id, data))
        if end_stream:
            self._close_local(stream_id, stream)

    def reset_stream(self, stream_id: int, error_code: ErrorCodes) -> None:
        self.streams.pop(stream_id, None)
        if len(self._reset_by_us) >= _REMEMBERED_RESETS:
            self._reset_by_us.clear()
        self._reset_by_us.add(stream_id)
        self._outbound.append(_frame(_RST_STREAM, 0, stream_id, struct.pack(">L", error_code)))

    def close_connection(
        self, error_code: ErrorCodes = ErrorCodes.NO_ERROR, last_stream_id: int | None = None
    ) -> None:
        last = self.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        self._outbound.append(_frame(_GOAWAY, 0, 0, struct.pack(">LL", last, error_code)))
        self.closed = True

    def _sendable(self, stream_id: int) -> _Stream:
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed or self.closed:
            raise StreamClosed(stream_id)
        return stream

    def _close_local(self, stream_id: int, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            del self.streams[stream_id]

    # -- receiving -------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Handle every complete frame in `data` (and what came before it), in order."""
        if self.closed:
            return
        buffer = self._buffer
        buffer += data
        pos = 0
        try:
            pos = self._check_preface(buffer)
            pos = self._receive_frames(buffer, pos)
        except ProtocolViolation as error:
            self.close_connection(error.error_code)
            raise
        finally:
            if not self.closed:
                del buffer[:pos]

    def _check_preface(self, buffer: bytearray) -> int:
        if self._preface_seen:
            return 0
        if len(buffer) < len(PREFACE):
            if not PREFACE.startswith(buffer):
                raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "not the HTTP/2 preface")
            return 0
        if buffer[: len(PREFACE)] != PREFACE:
            raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "not the HTTP/2 preface")
        self._preface_seen = True
        return len(PREFACE)

    def _receive_frames(self, buffer: bytearray, pos: int) -> int:
        if not self._preface_seen:
            return pos
        end = len(buffer)
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
            stream_id &= 0x7FFFFFFF
            try:
                self._receive_frame(frame_type, flags, stream_id, payload)
            except _StreamError as error:
                self.reset_stream(error.stream_id, error.error_code)
                self.listener.stream_reset(error.stream_id)
            if self.closed:
                break
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
        elif frame_type == _PRIORITY:
            _check_priority(stream_id, payload)
        elif frame_type == _GOAWAY:
            _connection_frame(stream_id)
            self.listener.goaway_received()
        elif frame_type == _PUSH_PROMISE:
            raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "a client sent PUSH_PROMISE")
        # Frames of unknown types are ignored (RFC 9113 5.5).

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
        try:  # always decoded: the HPACK state is the connection's, whatever becomes of the stream
            headers = self.decoder.decode(block)
        except hpack.HPACKError as error:
            raise ProtocolViolation(
                ErrorCodes.COMPRESSION_ERROR, f"undecodable header block: {error}"
            ) from None
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._on_trailers(stream_id, stream, end_stream)
        elif stream_id in self._reset_by_us:
            return  # sent before the client saw our RST_STREAM
        elif stream_id <= self.highest_inbound_stream_id:
            raise _StreamError(stream_id, ErrorCodes.STREAM_CLOSED)
        elif stream_id % 2 == 0:
            raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "a client opened an even-numbered stream")
        elif len(self.streams) >= self.max_concurrent_streams:
            raise ProtocolViolation(
                ErrorCodes.PROTOCOL_ERROR, "more streams than SETTINGS_MAX_CONCURRENT_STREAMS"
            )
        else:
            self.highest_inbound_stream_id = stream_id
            self.streams[stream_id] = _Stream(
                self._send_initial_window, self._recv_initial_window, end_stream
            )
            self.listener.request_received(stream_id, headers, end_stream)

    def _on_trailers(self, stream_id: int, stream: _Stream, end_stream: bool) -> None:
        if stream.remote_closed:
            raise _StreamError(stream_id, ErrorCodes.STREAM_CLOSED)
        if not end_stream:
            raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "trailers without END_STREAM")
        self._close_remote(stream_id, stream)
        self.listener.data_received_on(stream_id, b"", True)

    def _close_remote(self, stream_id: int, stream: _Stream) -> None:
        stream.remote_closed = True
        if stream.local_closed:
            del self.streams[stream_id]

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
        if stream is None or stream.remote_closed:
            if stream_id in self._reset_by_us:
                return  # sent before the client saw our RST_STREAM
            if stream_id > self.highest_inbound_stream_id:
                raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "DATA on an idle stream")
            raise _StreamError(stream_id, ErrorCodes.STREAM_CLOSED)
        stream.recv_window -= size
        if stream.recv_window < 0:
            raise _StreamError(stream_id, ErrorCodes.FLOW_CONTROL_ERROR)
        data = _unpad(payload) if flags & _PADDED else payload
        end_stream = bool(flags & _END_STREAM)
        if end_stream:
            self._close_remote(stream_id, stream)
        elif size:
            # Bodies are buffered whole at once, so the stream's window goes back at once as well.
            stream.recv_window += size
            self._outbound.append(_frame(_WINDOW_UPDATE, 0, stream_id, struct.pack(">L", size)))
        self.listener.data_received_on(stream_id, data, end_stream)

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolViolation(ErrorCodes.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong length")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ProtocolViolation(ErrorCodes.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            self.listener.window_opened(0)
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.highest_inbound_stream_id:
                raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return  # a stream that just closed: allowed and meaningless
        if increment == 0:
            raise _StreamError(stream_id, ErrorCodes.PROTOCOL_ERROR)
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            raise _StreamError(stream_id, ErrorCodes.FLOW_CONTROL_ERROR)
        self.listener.window_opened(stream_id)

    # -- SETTINGS, PING, RST_STREAM --------------------------------------------------------------

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
                self.listener.window_opened(0)
        elif identifier == _MAX_FRAME_SIZE:
            if not MAX_FRAME_SIZE <= value <= (1 << 24) - 1:
                raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
            self.max_outbound_frame_size = value
        elif identifier == _ENABLE_PUSH and value > 1:
            raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH other than 0 or 1")
        # The header table size binds an encoder that indexes; ours never does. The rest are for clients.

    def _our_settings_acknowledged(self) -> None:
        delta, self._recv_initial_window = (
            self._initial_window - self._recv_initial_window,
            self._initial_window,
        )
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
        if stream_id == 0 or stream_id > self.highest_inbound_stream_id:
            raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "RST_STREAM on stream 0 or an idle stream")
        if self.streams.pop(stream_id, None) is not None:
            self.listener.stream_reset(stream_id)


def _connection_frame(stream_id: int) -> None:
    if stream_id != 0:
        raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "a connection-level frame on a stream")


def _check_priority(stream_id: int, payload: bytes) -> None:
    if stream_id == 0:
        raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "PRIORITY on stream 0")
    if len(payload) != 5:
        raise _StreamError(stream_id, ErrorCodes.FRAME_SIZE_ERROR)


def _unpad(payload: bytes) -> bytes:
    if not payload or payload[0] >= len(payload):
        raise ProtocolViolation(ErrorCodes.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]
