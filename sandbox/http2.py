"""A small asyncio HTTP/2 server on `ServerConnection`, with the frame control fault injection needs.

Why not hypercorn: the emulators must send GOAWAY after the Nth stream while still answering the streams up to
it, advertise a chosen SETTINGS_MAX_CONCURRENT_STREAMS, delay single responses without holding up others,
and cost little CPU per request so that they are never the bottleneck of a fan-out benchmark.
Handlers are synchronous functions `Request -> Response` (`sandbox.http1` serves them over HTTP/1.1 too, and
`sandbox.http_server` listens for both). Delayed answers wait in one timer per millisecond
of due time, not one per request, and everything a batch of input or a timer produces goes out in one write.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from h2.errors import ErrorCodes

from sandbox.faults import FaultRuntime, Garbage, GarbageBurst
from sandbox.h2_connection import ProtocolViolation, ServerConnection, StreamClosed
from sandbox.hpack_decoder import Header
from sandbox.request_headers import MalformedRequest, RequestHead, parse_request_head
from workers.providers.hpack_static import StaticTableEncoder

log = logging.getLogger(__name__)

MAX_REQUEST_BODY = 1 << 20  # far above every provider limit; past it the stream is reset
_INITIAL_WINDOW = 1 << 20
# Values that change on every response would only fill a cache: never indexed, never cached.
_PER_RESPONSE = frozenset({"apns-id", "apns-unique-id", "content-length"})
_TIMER_TICK_S = 0.001  # delayed answers due within the same millisecond share one timer


@dataclass(slots=True)
class ConnectionInfo:
    """What a handler may know about the connection a request came on."""

    peer_certificate: bytes | None = None  # DER of the TLS client certificate, when one was presented
    tls: bool = False
    app_state: dict[str, Any] = field(default_factory=dict)  # per-connection state kept by the handler


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # with the query string
    authority: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    connection: ConnectionInfo

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_count(self, name: str) -> int:
        return sum(1 for key, _ in self.headers if key == name)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


class Handler(Protocol):
    def __call__(self, request: Request) -> Response: ...


class _Stream:
    __slots__ = ("body", "head", "to_send")

    def __init__(self, head: RequestHead) -> None:
        self.head = head
        self.body = bytearray()
        self.to_send: memoryview | None = None  # response body still waiting for flow-control window


class H2Protocol(asyncio.Protocol):
    """One HTTP/2 connection, server side; `ServerConnection` calls it back for each request event."""

    def __init__(
        self,
        handler: Handler,
        faults: FaultRuntime,
        on_open: Callable[[H2Protocol], None],
        on_close: Callable[[H2Protocol], None],
    ) -> None:
        self.conn = ServerConnection(
            self, max_concurrent_streams=faults.max_concurrent_streams, initial_window=_INITIAL_WINDOW
        )
        self.encoder = StaticTableEncoder(never_indexed=_PER_RESPONSE)
        self.handler = handler
        self.faults = faults
        self.on_open = on_open
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.info = ConnectionInfo()
        self.streams: dict[int, _Stream] = {}
        self.loop = asyncio.get_running_loop()
        self.streams_seen = 0
        self.goaway_last_stream: int | None = None  # set once we said GOAWAY: streams above it are refused
        self._due: dict[int, list[tuple[int, Response]]] = {}  # millisecond tick -> answers due then
        self._timers: dict[int, asyncio.TimerHandle] = {}

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.on_open(self)  # after the TLS handshake: failed handshakes never count as connections
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.info.tls = True
            self.info.peer_certificate = ssl_object.getpeercert(binary_form=True)
            if ssl_object.selected_alpn_protocol() not in (None, "h2"):
                transport.close()  # an HTTP/1.1-only client: real APNs refuses it too
                return
        self.conn.initiate()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            self.conn.receive(data)
        except ProtocolViolation:
            # The connection has queued a GOAWAY with the right error code; send it and hang up.
            self._flush()
            self._close_transport()
            return
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._due.clear()
        self.streams.clear()
        self.on_close(self)

    # -- events from the connection --------------------------------------------------------------

    def request_received(self, stream_id: int, headers: list[Header], end_stream: bool) -> None:
        if self._closing:
            return  # we finished a GOAWAY while handling this batch: nothing more is answered
        if self.goaway_last_stream is not None and stream_id > self.goaway_last_stream:
            self.conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        try:
            head = parse_request_head(headers)
        except MalformedRequest:
            # RFC 9113 8.1.1: a malformed request is a stream error; the connection's other streams go on.
            self.conn.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        self.streams[stream_id] = _Stream(head)
        self.streams_seen += 1
        every = self.faults.goaway_every_n_streams
        if every and self.streams_seen % every == 0:
            self.faults.goaways_sent += 1  # on the server's loop thread only
            self.send_goaway(last_stream_id=stream_id)
        if end_stream:
            self._on_stream_ended(stream_id)

    def data_received_on(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or self._closing:
            return
        stream.body += data
        if len(stream.body) > MAX_REQUEST_BODY:
            self.conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            self._forget(stream_id)
        elif end_stream:
            self._on_stream_ended(stream_id)

    def stream_reset(self, stream_id: int) -> None:
        self._forget(stream_id)

    def window_opened(self, stream_id: int) -> None:
        waiting = list(self.streams.items()) if not stream_id else [(stream_id, self.streams.get(stream_id))]
        for sid, stream in waiting:
            if stream is not None and stream.to_send is not None:
                self._send_body(sid, stream)

    def goaway_received(self) -> None:
        self._close_transport()

    @property
    def _closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def _on_stream_ended(self, stream_id: int) -> None:
        stream = self.streams[stream_id]
        garbage = self.faults.pick_garbage()
        if garbage is not None:
            self._answer_garbage(stream_id, garbage)
            return
        response = self._handle(stream)
        delay_s = self.faults.delay_s()
        if delay_s > 0:
            self._answer_later(stream_id, response, delay_s)
        else:
            self._respond(stream_id, response)

    def _handle(self, stream: _Stream) -> Response:
        head = stream.head
        request = Request(head.method, head.path, head.authority, head.headers, bytes(stream.body), self.info)
        try:
            return self.handler(request)
        except Exception:
            log.exception("sandbox handler failed")
            return Response(500)

    # -- responses -------------------------------------------------------------------------------

    def _answer_later(self, stream_id: int, response: Response, delay_s: float) -> None:
        tick = math.ceil((self.loop.time() + delay_s) / _TIMER_TICK_S)
        due = self._due.get(tick)
        if due is None:
            due = self._due[tick] = []
            self._timers[tick] = self.loop.call_at(tick * _TIMER_TICK_S, self._answer_due, tick)
        due.append((stream_id, response))

    def _answer_due(self, tick: int) -> None:
        self._timers.pop(tick, None)
        for stream_id, response in self._due.pop(tick, ()):
            if stream_id in self.streams:
                self._respond(stream_id, response)
        self._flush()

    def _answer_garbage(self, stream_id: int, burst: GarbageBurst) -> None:
        if burst.kind is not Garbage.truncated:
            content_type, body = burst.response_body()
            self._respond(stream_id, Response(burst.status, (("content-type", content_type),), body))
        else:  # truncated: a DATA frame that announces 64 bytes and carries 10, then the connection is gone
            self.conn.send_headers(stream_id, self.encoder.encode([(":status", "200")]), end_stream=False)
            self._flush()
            header = (64).to_bytes(3, "big") + bytes([0x0, 0x0]) + stream_id.to_bytes(4, "big")
            if self.transport is not None:
                self.transport.write(header + b"0123456789")
            self._close_transport()  # after what was written: the client reads a frame cut short

    def _respond(self, stream_id: int, response: Response) -> None:
        headers = [(":status", str(response.status)), *response.headers]
        if response.body:
            headers.append(("content-length", str(len(response.body))))
        try:
            self.conn.send_headers(stream_id, self.encoder.encode(headers), end_stream=not response.body)
        except StreamClosed:
            self._forget(stream_id)
            return
        if response.body:
            stream = self.streams[stream_id]
            stream.to_send = memoryview(response.body)
            self._send_body(stream_id, stream)
        else:
            self._forget(stream_id)

    def _send_body(self, stream_id: int, stream: _Stream) -> None:
        """Send as much of the body as the flow-control windows allow; the rest waits for WINDOW_UPDATE."""
        remaining = stream.to_send
        assert remaining is not None
        while remaining:
            size = min(self.conn.send_window(stream_id), self.conn.max_outbound_frame_size)
            if size <= 0:
                stream.to_send = remaining
                return
            chunk, remaining = remaining[:size], remaining[size:]
            try:
                self.conn.send_data(stream_id, chunk.tobytes(), end_stream=not remaining)
            except StreamClosed:
                break
        self._forget(stream_id)

    def _forget(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        if self.goaway_last_stream is not None and not self.streams:
            self._finish_goaway()

    # -- GOAWAY and shutdown ---------------------------------------------------------------------

    def send_goaway(self, *, last_stream_id: int | None = None) -> None:
        """Stop at `last_stream_id`: refuse streams above it, answer those up to it, then GOAWAY and close.

        The GOAWAY goes after the last answer, not before: h2-based clients (httpx, aioapns) drop every
        frame that follows a GOAWAY, so in-flight answers would be lost to them. Streams above the limit
        get RST_STREAM(REFUSED_STREAM), which tells the client that they were not processed.
        """
        if self.goaway_last_stream is not None or self.transport is None:
            return
        last = self.conn.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        self.goaway_last_stream = last
        for stream_id in [sid for sid in self.streams if sid > last]:
            self.conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            self._forget(stream_id)
        if not self.streams:
            self._finish_goaway()

    def _finish_goaway(self) -> None:
        if self._closing or self.conn.closed:
            return
        self.conn.close_connection(last_stream_id=self.goaway_last_stream)
        self._flush()
        self._close_transport()

    def close_gracefully(self) -> None:
        self.send_goaway()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _close_transport(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
