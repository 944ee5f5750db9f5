"""A minimal HTTP/2 client for the sandbox's own tests and benchmark; production clients live in workers/."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


class H2ClientError(Exception):
    """The request got no answer."""


class StreamRefused(H2ClientError):
    """The server refused the stream or said GOAWAY below it: the request was not processed."""


class ConnectionLost(H2ClientError):
    """The connection closed before the answer came."""


@dataclass(frozen=True, slots=True)
class ClientResponse:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[ClientResponse]
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


class H2ClientProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, _Pending] = {}
        self.settings_received = asyncio.Event()
        self.window_open = asyncio.Event()
        self.closed = asyncio.Event()
        self.goaway_last_stream: int | None = None
        self.remote_max_streams: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            self._fail_all(ConnectionLost("protocol error"))
            return
        for event in events:
            self._on_event(event)
        self.flush()

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            changed = event.changed_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
            if changed is not None:
                self.remote_max_streams = changed.new_value
            self.settings_received.set()
        elif isinstance(event, h2.events.ResponseReceived):
            self._on_headers(event.stream_id, event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self._on_data(event)
        elif isinstance(event, h2.events.StreamEnded):
            self._finish(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self._fail(event.stream_id, StreamRefused(f"stream reset: {event.error_code!r}"))
        elif isinstance(event, h2.events.WindowUpdated):
            self.window_open.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._on_goaway(event.last_stream_id)

    def _on_headers(self, stream_id: int | None, headers: object) -> None:
        pending = self.pending.get(stream_id or 0)
        if pending is not None and isinstance(headers, list):
            pending.headers.update({str(k): str(v) for k, v in headers})

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream_id = event.stream_id or 0
        self.conn.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
        pending = self.pending.get(stream_id)
        if pending is not None:
            pending.body += event.data or b""

    def _finish(self, stream_id: int | None) -> None:
        pending = self.pending.pop(stream_id or 0, None)
        if pending is not None and not pending.future.done():
            status = int(pending.headers.pop(":status", "0"))
            pending.future.set_result(ClientResponse(status, pending.headers, bytes(pending.body)))

    def _fail(self, stream_id: int | None, error: Exception) -> None:
        pending = self.pending.pop(stream_id or 0, None)
        if pending is not None and not pending.future.done():
            pending.future.set_exception(error)

    def _on_goaway(self, last_stream_id: int | None) -> None:
        self.goaway_last_stream = last_stream_id or 0
        for stream_id in [s for s in self.pending if s > self.goaway_last_stream]:
            self._fail(stream_id, StreamRefused("GOAWAY"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(ConnectionLost("connection closed"))
        self.closed.set()

    def _fail_all(self, error: Exception) -> None:
        for stream_id in list(self.pending):
            self._fail(stream_id, error)

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class H2Client:
    """One HTTP/2 connection; `request` may be called concurrently, up to the server's stream limit."""

    def __init__(self, protocol: H2ClientProtocol, authority: str, scheme: str) -> None:
        self.protocol = protocol
        self.authority = authority
        self.scheme = scheme
        self._slots: asyncio.Semaphore | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> H2Client:
        loop = asyncio.get_running_loop()
        hostname = server_hostname if ssl_context is not None else None
        _, protocol = await loop.create_connection(
            H2ClientProtocol, host, port, ssl=ssl_context, server_hostname=hostname
        )
        await protocol.settings_received.wait()
        scheme = "https" if ssl_context is not None else "http"
        return cls(protocol, f"{server_hostname or host}:{port}", scheme)

    @property
    def is_open(self) -> bool:
        return self.protocol.goaway_last_stream is None and not self.protocol.closed.is_set()

    async def request(
        self, method: str, path: str, headers: list[tuple[str, str]] | None = None, body: bytes = b""
    ) -> ClientResponse:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.protocol.remote_max_streams or 100)
        async with self._slots:
            return await self._request(method, path, headers or [], body)

    async def _request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> ClientResponse:
        if not self.is_open:
            raise StreamRefused("connection is going away")
        protocol = self.protocol
        conn = protocol.conn
        stream_id = conn.get_next_available_stream_id()
        future: asyncio.Future[ClientResponse] = asyncio.get_running_loop().create_future()
        protocol.pending[stream_id] = _Pending(future)
        request_headers = [(":method", method), (":scheme", self.scheme), (":authority", self.authority)]
        conn.send_headers(stream_id, [*request_headers, (":path", path), *headers], end_stream=not body)
        protocol.flush()
        if body:
            await self._send_body(stream_id, body)
        return await future

    async def _send_body(self, stream_id: int, body: bytes) -> None:
        conn = self.protocol.conn
        view = memoryview(body)
        while view:
            size = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size, len(view))
            if size <= 0:
                self.protocol.window_open.clear()
                await self.protocol.window_open.wait()
                continue
            conn.send_data(stream_id, view[:size].tobytes(), end_stream=size == len(view))
            view = view[size:]
            self.protocol.flush()

    async def close(self) -> None:
        if self.protocol.transport is None:
            return
        if not self.protocol.closed.is_set():
            try:
                self.protocol.conn.close_connection()
                self.protocol.flush()
            except h2.exceptions.ProtocolError:
                pass  # the server already closed it
            self.protocol.transport.close()
        await self.protocol.closed.wait()
