"""A small asyncio HTTP/2 server on the `h2` state machine, with the frame control fault injection needs.

Why not hypercorn: the emulators must send GOAWAY after the Nth stream while still answering the streams up to
it, advertise a chosen SETTINGS_MAX_CONCURRENT_STREAMS, delay single responses without holding up others,
and cost little CPU per request so that they are never the bottleneck of a fan-out benchmark.
Handlers are synchronous functions `Request -> Response`; latency is a timer, not a task per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
from h2.errors import ErrorCodes

from sandbox.faults import FaultRuntime

log = logging.getLogger(__name__)

MAX_REQUEST_BODY = 1 << 20  # far above every provider limit; past it the stream is reset
_INITIAL_WINDOW = 1 << 20
_PER_RESPONSE = frozenset({"apns-id", "apns-unique-id"})


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
    __slots__ = ("body", "headers", "timer", "to_send")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.body = bytearray()
        self.timer: asyncio.TimerHandle | None = None
        self.to_send: memoryview | None = None  # response body still waiting for flow-control window


class H2Protocol(asyncio.Protocol):
    """One HTTP/2 connection, server side."""

    def __init__(
        self,
        handler: Handler,
        faults: FaultRuntime,
        on_open: Callable[[H2Protocol], None],
        on_close: Callable[[H2Protocol], None],
    ) -> None:
        # Our own response headers are well-formed; validating them again costs more than the handler.
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=True,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.encoder = _PlainEncoder()
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
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.faults.max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _INITIAL_WINDOW,
            },
        )
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(_INITIAL_WINDOW)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            # h2 has queued a GOAWAY with the right error code; send it and hang up.
            self._flush()
            self._close_transport()
            return
        for event in events:
            if self.transport is None or self.transport.is_closing():
                return  # we finished a GOAWAY while handling this batch: nothing more is answered
            self._dispatch(event)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for stream in self.streams.values():
            if stream.timer is not None:
                stream.timer.cancel()
        self.streams.clear()
        self.on_close(self)

    # -- events ----------------------------------------------------------------------------------

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
        elif isinstance(event, h2.events.DataReceived):
            self._on_data(event)
        elif isinstance(event, h2.events.StreamEnded):
            self._on_stream_ended(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self._forget(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated):
            self._on_window_updated(event.stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._close_transport()

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        assert stream_id is not None
        assert event.headers is not None
        if self.goaway_last_stream is not None and stream_id > self.goaway_last_stream:
            with contextlib.suppress(h2.exceptions.ProtocolError):  # h2 may have closed already
                self.conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        self.streams[stream_id] = _Stream(list(event.headers))
        self.streams_seen += 1
        every = self.faults.goaway_every_n_streams
        if every and self.streams_seen % every == 0:
            self.send_goaway(last_stream_id=stream_id)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream_id = event.stream_id
        assert stream_id is not None
        assert event.data is not None
        # Consumed at once into the request buffer, so the window is given back at once.
        self.conn.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.body += event.data
        if len(stream.body) > MAX_REQUEST_BODY:
            self.conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            self._forget(stream_id)

    def _on_stream_ended(self, stream_id: int | None) -> None:
        stream = self.streams.get(stream_id or 0)
        if stream is None or stream_id is None:
            return
        response = self._handle(stream)
        delay_s = self.faults.delay_s()
        if delay_s > 0:
            stream.timer = self.loop.call_later(delay_s, self._respond_later, stream_id, response)
        else:
            self._respond(stream_id, response)

    def _handle(self, stream: _Stream) -> Response:
        try:
            return self.handler(_to_request(stream, self.info))
        except Exception:
            log.exception("sandbox handler failed")
            return Response(500)

    # -- responses -------------------------------------------------------------------------------

    def _respond_later(self, stream_id: int, response: Response) -> None:
        if stream_id in self.streams:
            self._respond(stream_id, response)
            self._flush()

    def _respond(self, stream_id: int, response: Response) -> None:
        stream = self.streams[stream_id]
        stream.timer = None
        headers: list[tuple[str, str] | hpack.NeverIndexedHeaderTuple] = [(":status", str(response.status))]
        # Values that change on every response would only churn the HPACK table: never index them.
        headers += [
            hpack.NeverIndexedHeaderTuple(k, v) if k in _PER_RESPONSE else (k, v) for k, v in response.headers
        ]
        if response.body:
            headers.append(("content-length", str(len(response.body))))
        try:
            self.conn.send_headers(stream_id, headers, end_stream=not response.body)
        except h2.exceptions.StreamClosedError:
            self._forget(stream_id)
            return
        if response.body:
            stream.to_send = memoryview(response.body)
            self._send_body(stream_id, stream)
        else:
            self._forget(stream_id)

    def _send_body(self, stream_id: int, stream: _Stream) -> None:
        """Send as much of the body as the flow-control windows allow; the rest waits for WINDOW_UPDATE."""
        remaining = stream.to_send
        assert remaining is not None
        while remaining:
            size = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if size <= 0:
                stream.to_send = remaining
                return
            chunk, remaining = remaining[:size], remaining[size:]
            self.conn.send_data(stream_id, chunk.tobytes(), end_stream=not remaining)
        self._forget(stream_id)

    def _on_window_updated(self, stream_id: int | None) -> None:
        waiting = list(self.streams.items()) if not stream_id else [(stream_id, self.streams.get(stream_id))]
        for sid, stream in waiting:
            if stream is not None and stream.to_send is not None:
                try:
                    self._send_body(sid, stream)
                except h2.exceptions.StreamClosedError:
                    self._forget(sid)

    def _forget(self, stream_id: int | None) -> None:
        stream = self.streams.pop(stream_id or 0, None)
        if stream is not None and stream.timer is not None:
            stream.timer.cancel()
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
        if self.transport is None or self.transport.is_closing():
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection(last_stream_id=self.goaway_last_stream)
        self._flush()
        self._close_transport()

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


class _PlainEncoder(hpack.Encoder):
    """HPACK without Huffman coding: per-request ids (apns-id, apns-unique-id) are random and barely shrink,
    and pure-Python Huffman coding was the largest CPU cost per response."""

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        return super().encode(headers, huffman=False)


def _to_request(stream: _Stream, info: ConnectionInfo) -> Request:
    pseudo: dict[str, str] = {}
    headers: list[tuple[str, str]] = []
    for raw_name, raw_value in stream.headers:
        name, value = raw_name.decode("ascii"), raw_value.decode("utf-8", "replace")
        if name.startswith(":"):
            pseudo[name] = value
        else:
            headers.append((name, value))
    return Request(
        method=pseudo.get(":method", ""),
        path=pseudo.get(":path", ""),
        authority=pseudo.get(":authority", ""),
        headers=tuple(headers),
        body=bytes(stream.body),
        connection=info,
    )


class H2Server:
    """Serves one handler on one port; `close()` says GOAWAY to every client and waits for their answers."""

    def __init__(self, handler: Handler, faults: FaultRuntime, *, ssl_context: ssl.SSLContext | None = None):
        self.handler = handler
        self.faults = faults
        self.ssl_context = ssl_context
        self.connections: set[H2Protocol] = set()
        self._server: asyncio.Server | None = None
        self._all_closed = asyncio.Event()

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._new_protocol, host, port, ssl=self.ssl_context)
        sockname = self._server.sockets[0].getsockname()
        return int(sockname[1])

    def _new_protocol(self) -> H2Protocol:
        return H2Protocol(self.handler, self.faults, self._connection_opened, self._connection_closed)

    def _connection_opened(self, protocol: H2Protocol) -> None:
        self.connections.add(protocol)
        self._all_closed.clear()

    def _connection_closed(self, protocol: H2Protocol) -> None:
        self.connections.discard(protocol)
        if not self.connections:
            self._all_closed.set()

    def goaway_all(self) -> None:
        for protocol in list(self.connections):
            protocol.send_goaway()

    async def close(self, *, grace_s: float = 5.0) -> None:
        if self._server is None:
            return
        self._server.close()
        self.goaway_all()
        if self.connections:
            try:
                await asyncio.wait_for(self._all_closed.wait(), grace_s)
            except TimeoutError:
                for protocol in list(self.connections):
                    protocol.abort()
        await self._server.wait_closed()
        self._server = None
