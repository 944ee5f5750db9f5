"""A lean HTTP/2 client for `sandbox.bench`: one repeated request, sent for less CPU than the emulator spends.

With h2 on the client side the client costs more CPU per request than the emulator, so a benchmark would
measure the client. This one sends the same octets an h2-based client (httpx, aioapns) sends once its HPACK
table is warm — every field indexed but `authorization`, which h2 sends as a never-indexed Huffman-coded
literal — and, like mdmq's own client, the requests started in one turn of the event loop leave in one write.
Responses are decoded in full (HPACK, status, body); anything unexpected fails the request.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import hpack

from sandbox.hpack_decoder import CachingDecoder

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME_HEAD = struct.Struct(">BHBBL")
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
_END_STREAM = _ACK = 0x1
_END_HEADERS = 0x4
_MAX_CONCURRENT_STREAMS = 3
_OUR_WINDOW = 1 << 24  # responses are small; never let the emulator wait for us


class RequestFailed(Exception):
    """The emulator reset the stream or closed the connection before answering."""


@dataclass(frozen=True, slots=True)
class BenchResponse:
    status: int
    body: bytes


def tls_context(ca_pem: str, certificate_pem: str, key_pem: str) -> ssl.SSLContext:
    """A client context that trusts `ca_pem`, presents the certificate (an MDM push certificate: APNs takes
    MDM pushes over client certificates only [A-MDMPUSH]) and offers h2."""
    context = ssl.create_default_context(cadata=ca_pem)
    context.set_alpn_protocols(["h2"])
    with private_pem_file(certificate_pem + key_pem) as path:
        context.load_cert_chain(path)
    return context


@contextmanager
def private_pem_file(text: str) -> Iterator[str]:
    """The path of a file holding `text` that only this user may read, removed on exit: ssl (and aioapns,
    through it) loads key material only from files."""
    with tempfile.TemporaryDirectory(prefix="mdmq-bench-") as directory:
        path = os.path.join(directory, "client.pem")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
        yield path


def _frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return _FRAME_HEAD.pack(length >> 16, length & 0xFFFF, frame_type, flags, stream_id) + payload


class _Pending:
    __slots__ = ("body", "future", "status")

    def __init__(self, future: asyncio.Future[BenchResponse]) -> None:
        self.future = future
        self.status = 0
        self.body = b""


class BenchConnection(asyncio.Protocol):
    """One connection sending `headers` (name, value; the first ones pseudo-header fields) and `body`."""

    def __init__(self, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        encoder = hpack.Encoder()
        fields = [hpack.NeverIndexedHeaderTuple(k, v) if k == "authorization" else (k, v) for k, v in headers]
        self._blocks = [encoder.encode(fields), encoder.encode(fields)]  # cold table, then warm
        self._body = body
        self._decoder = CachingDecoder()
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._pending: dict[int, _Pending] = {}
        self._next_stream_id = 1
        self._send_window = 65_535
        self._window_open = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[int] = self._loop.create_future()  # the emulator's stream limit
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.transport: asyncio.Transport | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        ssl_context: ssl.SSLContext | None = None,
    ) -> BenchConnection:
        hostname = "localhost" if ssl_context is not None else None
        _, connection = await asyncio.get_running_loop().create_connection(
            lambda: cls(headers, body), host, port, ssl=ssl_context, server_hostname=hostname
        )
        await connection.ready
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        settings = struct.pack(">HL", 4, _OUR_WINDOW)  # SETTINGS_INITIAL_WINDOW_SIZE
        window = struct.pack(">L", _OUR_WINDOW - 65_535)
        transport.write(_PREFACE + _frame(_SETTINGS, 0, 0, settings) + _frame(_WINDOW_UPDATE, 0, 0, window))

    async def request(self) -> BenchResponse:
        while self._send_window < len(self._body):
            self._window_open.clear()
            await self._window_open.wait()
        stream_id, self._next_stream_id = self._next_stream_id, self._next_stream_id + 2
        block = self._blocks[0] if stream_id == 1 else self._blocks[1]
        self._out.append(_frame(_HEADERS, _END_HEADERS, stream_id, block))
        self._out.append(_frame(_DATA, _END_STREAM, stream_id, self._body))
        self._send_window -= len(self._body)
        if len(self._out) == 2:
            self._loop.call_soon(self._flush)
        pending = self._pending[stream_id] = _Pending(self._loop.create_future())
        return await pending.future

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        pos, end = 0, len(buffer)
        while end - pos >= 9:
            high, low, frame_type, flags, stream_id = _FRAME_HEAD.unpack_from(buffer, pos)
            length = high << 16 | low
            if end - pos - 9 < length:
                break
            self._on_frame(
                frame_type, flags, stream_id & 0x7FFFFFFF, bytes(buffer[pos + 9 : pos + 9 + length])
            )
            pos += 9 + length
        del buffer[:pos]

    def _on_frame(self, frame_type: int, flags: int, stream_id: int, payload: bytes) -> None:
        if frame_type == _HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif frame_type == _DATA:
            self._on_data(flags, stream_id, payload)
        elif frame_type == _WINDOW_UPDATE and stream_id == 0:
            self._send_window += int.from_bytes(payload, "big") & 0x7FFFFFFF
            self._window_open.set()
        elif frame_type == _SETTINGS and not flags & _ACK:
            self._on_settings(payload)
        elif frame_type == _PING and not flags & _ACK:
            self._write(_frame(_PING, _ACK, 0, payload))
        elif frame_type == _RST_STREAM:
            self._fail(stream_id, RequestFailed(f"stream reset: {int.from_bytes(payload, 'big')}"))
        elif frame_type == _GOAWAY:
            for pending_id in list(self._pending):
                self._fail(pending_id, RequestFailed("GOAWAY"))

    def _on_settings(self, payload: bytes) -> None:
        limit = 100  # RFC 9113 recommends at least 100 when a server says nothing
        for offset in range(0, len(payload), 6):
            identifier, value = struct.unpack_from(">HL", payload, offset)
            if identifier == _MAX_CONCURRENT_STREAMS:
                limit = value
        self._write(_frame(_SETTINGS, _ACK, 0))
        if not self.ready.done():
            self.ready.set_result(limit)

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        assert flags & _END_HEADERS, "the emulator's answers fit in one frame"
        headers = dict(self._decoder.decode(payload))
        pending = self._pending.get(stream_id)
        if pending is not None:
            pending.status = int(headers[b":status"])
            if flags & _END_STREAM:
                self._finish(stream_id)

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        pending = self._pending.get(stream_id)
        if pending is not None:
            pending.body += payload
            if flags & _END_STREAM:
                self._finish(stream_id)

    def _finish(self, stream_id: int) -> None:
        pending = self._pending.pop(stream_id)
        if not pending.future.done():
            pending.future.set_result(BenchResponse(pending.status, pending.body))

    def _fail(self, stream_id: int, error: Exception) -> None:
        pending = self._pending.pop(stream_id, None)
        if pending is not None and not pending.future.done():
            pending.future.set_exception(error)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        for stream_id in list(self._pending):
            self._fail(stream_id, RequestFailed("connection closed"))
        if not self.ready.done():
            self.ready.set_exception(RequestFailed("connection closed before SETTINGS"))
        if not self.closed.done():
            self.closed.set_result(None)

    async def close(self) -> None:
        """GOAWAY, then close, and wait until the socket is closed: over TLS the close notify goes first."""
        if self.transport is not None:
            self._write(_frame(_GOAWAY, 0, 0, struct.pack(">LL", 0, 0)))
            self.transport.close()
            await self.closed
