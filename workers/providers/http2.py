"""A small HTTP/2 client on asyncio: persistent, multiplexed connections to one origin.

Written on a protocol layer of its own (`h2_client`) rather than on httpx, or on h2, because the push fan-out
spends its CPU here, and this path costs far less per request than either (`benchmarks/apns_clients.py`
compares it with aioapns). Everything the protocol layer, ssl and socket code raise is translated where it
enters, into `ConnectionFailed` (could not connect at all) or `StreamUnanswered` (the connection ended before
this request was answered, so it may be sent again).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import json
import logging
import ssl
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from h2.errors import ErrorCodes

from workers.providers.base import ConnectionFailed, CredentialRejected, ProviderError
from workers.providers.h2_client import ClientConnection, ProtocolViolation, StreamsExhausted, error_name
from workers.providers.tls import TlsContext

logger = logging.getLogger(__name__)

Headers = Sequence[tuple[bytes, bytes]]
_StreamFilter = Callable[[int], bool]

# Receive windows large enough that the server never waits on us for the small JSON answers of a push API.
_RECEIVE_WINDOW = 1 << 24
# A connection takes at most this many streams even when the server allows more (APNs: 1000), so that
# concurrency spreads over several connections and losing one leaves fewer requests unanswered.
# 4 connections x 200 streams cover 40 ms of latency at 20,000 requests/s.
DEFAULT_STREAMS_PER_CONNECTION = 200
# What one read from a TLS connection's socket takes at most: one TLS record. asyncio allocates (and fills)
# a buffer of 256 KiB for every TLS connection; a push service's answers are a few hundred bytes, and one
# process may hold a connection for each of 1,000 organizations' certificates: 250 MB of buffers.
_TLS_READ_BYTES = 16 * 1024
# The read buffer of every TLS connection of a thread (`_TlsLayer.get_buffer`).
_thread_read_buffers = threading.local()


class StreamUnanswered(ProviderError):
    """The connection ended (GOAWAY, reset, loss) before the provider answered; the request may be resent."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: `https` is TLS with ALPN h2, `http` is cleartext h2c with prior knowledge."""

    scheme: str
    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {parts.scheme}://{parts.hostname}")
        default_port = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname, parts.port or default_port)

    @property
    def authority(self) -> bytes:
        default_port = 443 if self.scheme == "https" else 80
        name = self.host if self.port == default_port else f"{self.host}:{self.port}"
        return name.encode()


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")

    def retry_after_s(self) -> float | None:
        return retry_after_s(self.header(b"retry-after"))

    def json_object(self) -> dict[str, Any] | None:
        """The body as the JSON object every provider answers with: `{}` when there is no body, None when
        there is one and it is not a JSON object (an HTML page from a proxy in front, a body cut short)."""
        if not self.body:
            return {}
        try:
            parsed = json.loads(self.body)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None

    def unreadable(self) -> str:
        """The reason given for an answer `json_object` could not read: its content type, and nothing of
        its body (which could be anything, of any length)."""
        content_type = (self.header(b"content-type") or "no content type").split(";")[0].strip()
        printable = "".join(c for c in content_type[:40] if c.isprintable())
        return f"unreadable answer ({printable})"


class _Stream:
    """One request in flight: the bytes still to send and the answer being assembled."""

    __slots__ = ("body", "deadline", "future", "headers", "pending", "status")

    def __init__(
        self, pending: bytes, future: asyncio.Future[Response], deadline: asyncio.TimerHandle
    ) -> None:
        self.pending = pending
        self.future = future
        self.deadline = deadline
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 connection. Not used directly: `Http2Pool` hands out its free streams."""

    __slots__ = (
        "_allowed_streams",
        "_blocked",
        "_closed",
        "_flush_scheduled",
        "_origin",
        "_pool",
        "_protocol",
        "_ready",
        "_request_timeout_s",
        "_stream_limit",
        "_streams",
        "_transport",
        "accepting",
        "last_error",
    )

    def __init__(
        self, origin: Origin, stream_limit: int, pool: _PoolListener, request_timeout_s: float = 30.0
    ) -> None:
        self._protocol = ClientConnection(self, receive_window=_RECEIVE_WINDOW)
        self._origin = origin
        self._stream_limit = stream_limit
        self._request_timeout_s = request_timeout_s
        self._pool = pool
        self._allowed_streams = 0  # min(server's SETTINGS_MAX_CONCURRENT_STREAMS, stream_limit)
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _Stream] = {}
        self._blocked: dict[
            int, _Stream
        ] = {}  # streams whose body waits for the server's flow-control window
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed = asyncio.get_running_loop().create_future()
        self.accepting = False
        self.last_error: str | None = None
        self._flush_scheduled = False

    # --- capacity -------------------------------------------------------------------------------------------

    @property
    def free_streams(self) -> int:
        if not self.accepting:
            return 0
        return self._allowed_streams - len(self._streams)

    @property
    def in_flight(self) -> int:
        return len(self._streams)

    # --- requests -------------------------------------------------------------------------------------------

    def start_request(self, headers: Headers, body: bytes) -> asyncio.Future[Response]:
        """Send one request now (the caller checked `free_streams`); the future may fail: StreamUnanswered."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Response] = loop.create_future()
        try:
            stream_id = self._protocol.send_request(headers, end_stream=not body)
        except StreamsExhausted:
            # Stream ids used up, or the connection closed under us: another connection takes the request.
            self._stop_accepting("cannot open a stream: stream ids used up")
            future.set_exception(StreamUnanswered("no stream available"))
            return future
        deadline = loop.call_later(self._request_timeout_s, self._expire, stream_id)
        stream = _Stream(body, future, deadline)
        self._streams[stream_id] = stream
        if body:
            self._send_pending(stream_id, stream)
        self._flush_soon()
        return future

    def _flush_soon(self) -> None:
        # Every request started in this turn of the loop leaves in one write: one syscall for many pushes.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _send_pending(self, stream_id: int, stream: _Stream) -> None:
        # Flow control: send what the windows allow now, the rest when the server opens them (WINDOW_UPDATE).
        while stream.pending:
            window = self._protocol.send_window(stream_id)
            if window <= 0:
                self._blocked[stream_id] = stream
                return
            chunk, stream.pending = stream.pending[:window], stream.pending[window:]
            self._protocol.send_data(stream_id, chunk, end_stream=not stream.pending)
        self._blocked.pop(stream_id, None)

    def _send_blocked(self) -> None:
        for stream_id, stream in list(self._blocked.items()):
            if self._streams.get(stream_id) is not stream:
                del self._blocked[stream_id]  # reset or failed meanwhile
                continue
            self._send_pending(stream_id, stream)

    # --- asyncio.Protocol ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._protocol.initiate()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            self._protocol.receive(data)
        except ProtocolViolation as e:
            self._flush()  # its GOAWAY, before the connection goes
            self._abort(f"protocol error: {e}")
            return
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self.last_error or ("connection lost" if exc else "connection closed")
        self.accepting = False
        self._fail_streams(lambda _stream_id: True, reason)
        if not self._ready.done():
            self._ready.set_exception(ConnectionFailed(reason))
        if not self._closed.done():
            self._closed.set_result(None)
        self._pool.connection_changed(self)

    # --- what the protocol layer tells ---------------------------------------------------------------------

    def response_received(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.headers = dict(headers)
        stream.status = int(stream.headers.pop(b":status", b"0"))

    def data_received_on(self, stream_id: int, data: bytes) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.body += data

    def stream_ended(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        stream.deadline.cancel()
        if not stream.future.done():
            stream.future.set_result(Response(stream.status, stream.headers, bytes(stream.body)))
        self._stream_freed()

    def stream_reset(self, stream_id: int, error_code: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._fail(stream, f"stream reset: {error_name(error_code)}")
        self._stream_freed()

    def settings_changed(self) -> None:
        self._on_settings()

    def window_opened(self) -> None:
        if self._blocked:
            self._send_blocked()

    def goaway_received(self, last_stream_id: int, error_code: int) -> None:
        # Streams above last_stream_id were never processed: they fail now and may be resent elsewhere.
        # Those at or below it may still be answered on this connection, which then closes.
        self.last_error = f"GOAWAY {error_name(error_code)}"
        self._stop_accepting(self.last_error)
        self._fail_streams(lambda stream_id: stream_id > last_stream_id, self.last_error)
        self._close_if_drained()

    def _expire(self, stream_id: int) -> None:
        # A server that accepts a stream and never answers must not hold the push (or the stream) for ever.
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._protocol.reset_stream(stream_id, ErrorCodes.CANCEL)
        self._fail(stream, f"no answer within {self._request_timeout_s:g} s")
        self._stream_freed()
        self._flush_soon()

    @staticmethod
    def _fail(stream: _Stream, reason: str) -> None:
        stream.deadline.cancel()
        if not stream.future.done():
            stream.future.set_exception(StreamUnanswered(reason))

    def _stream_freed(self) -> None:
        if self.accepting:
            self._pool.stream_freed(self)
        else:
            self._close_if_drained()

    def _on_settings(self) -> None:
        self._allowed_streams = min(self._protocol.max_concurrent_streams, self._stream_limit)
        if not self._ready.done():
            # The server's first SETTINGS says how many streams it allows: only now is the connection usable.
            self.accepting = True
            self._ready.set_result(None)
        self._pool.connection_changed(self)

    # --- closing -------------------------------------------------------------------------------------------

    def _stop_accepting(self, reason: str) -> None:
        if self.accepting:
            logger.debug("HTTP/2 connection to %s stops taking requests: %s", self._origin.host, reason)
        self.accepting = False
        if not self._ready.done():
            self._ready.set_exception(ConnectionFailed(reason))
        self._pool.connection_changed(self)

    def _fail_streams(self, which: _StreamFilter, reason: str) -> None:
        for stream_id in [stream_id for stream_id in self._streams if which(stream_id)]:
            self._fail(self._streams.pop(stream_id), reason)

    def _close_if_drained(self) -> None:
        if not self.accepting and not self._streams and self._transport is not None:
            self._transport.close()

    def _abort(self, reason: str) -> None:
        self.last_error = reason
        self.accepting = False
        if self._transport is not None:
            self._transport.abort()

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self._protocol.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    @property
    def closed(self) -> bool:
        return self._closed.done()

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._transport

    async def wait_ready(self) -> None:
        await self._ready

    async def close(self, grace_s: float) -> None:
        """Stop taking requests, let those in flight finish (up to `grace_s`), then close."""
        if self._transport is None or self._closed.done():
            return
        if self.accepting:
            self.accepting = False
            self._protocol.close_connection()
            self._flush()
        self._close_if_drained()
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), grace_s)
        except TimeoutError:
            self._abort("closed by client")
            await self._closed


class _PoolListener(Protocol):
    def stream_freed(self, connection: Http2Connection) -> None: ...

    def connection_changed(self, connection: Http2Connection) -> None: ...


class Http2Pool:
    """Connections to one origin, opened one at a time as concurrency needs them, up to `max_connections`.

    A request waits for a free stream on any connection; a connection that ends (GOAWAY, loss) is dropped and
    the next request that finds no room opens its replacement.
    """

    __slots__ = (
        "_closed",
        "_connect_error",
        "_connect_timeout_s",
        "_connections",
        "_draining",
        "_max_connections",
        "_opening",
        "_request_timeout_s",
        "_ssl_context",
        "_streams_per_connection",
        "_waiters",
        "origin",
    )

    def __init__(
        self,
        origin: Origin,
        *,
        ssl_context: TlsContext | None = None,
        max_connections: int = 4,
        streams_per_connection: int = DEFAULT_STREAMS_PER_CONNECTION,
        connect_timeout_s: float = 10.0,
        request_timeout_s: float = 30.0,
    ) -> None:
        if origin.scheme == "https" and ssl_context is None:
            default = ssl.create_default_context()
            default.set_alpn_protocols(["h2"])
            ssl_context = default
        self.origin = origin
        self._ssl_context = ssl_context if origin.scheme == "https" else None
        self._max_connections = max_connections
        self._streams_per_connection = streams_per_connection
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout_s = request_timeout_s
        self._connections: list[Http2Connection] = []
        # Made when a connection first drains: most pools never have one, and an empty set is 216 bytes.
        self._draining: set[Http2Connection] | None = None
        self._opening: asyncio.Task[None] | None = None
        self._connect_error: ProviderError | None = None
        # Made at the first wait for a stream: most pools never wait, and an empty deque is 0.7 KiB.
        self._waiters: deque[asyncio.Future[None]] | None = None
        self._closed = False

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def request(self, headers: Headers, body: bytes = b"") -> Response:
        """Send one request on a free stream. Raises ConnectionFailed or StreamUnanswered, nothing else."""
        connection = await self._connection_with_free_stream()
        return await connection.start_request(headers, body)

    def request_headers(self, method: bytes, path: bytes | tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
        """The pseudo-headers; `path` may be given as a ready header tuple (e.g. never indexed)."""
        return [
            (b":method", method),
            (b":scheme", self.origin.scheme.encode()),
            path if isinstance(path, tuple) else (b":path", path),
            (b":authority", self.origin.authority),
        ]

    async def _connection_with_free_stream(self) -> Http2Connection:
        while True:
            if self._closed:
                raise ConnectionFailed("the provider was closed")
            connection = self._least_busy()
            if connection is not None:
                return connection
            if self._opening is None and len(self._connections) < self._max_connections:
                self._opening = asyncio.get_running_loop().create_task(self._open())
            if self._connections or self._opening is None:
                await self._wait_for_capacity()
                continue
            # Nothing to wait on but the connection being opened: if it fails, this request fails with it.
            await asyncio.shield(self._opening)
            if not self._connections and self._connect_error is not None:
                raise type(self._connect_error)(str(self._connect_error))

    def _least_busy(self) -> Http2Connection | None:
        best: Http2Connection | None = None
        best_free = 0
        for connection in self._connections:
            free = connection.free_streams
            if free > best_free:
                best, best_free = connection, free
        return best

    async def _wait_for_capacity(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = deque()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if not waiter.done():
                waiter.cancel()

    def _wake_all(self) -> None:
        if self._waiters:
            self._wake(len(self._waiters))

    def _wake(self, count: int) -> None:
        waiters = self._waiters
        while count > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1

    def stream_freed(self, connection: Http2Connection) -> None:
        # One stream freed, one waiter woken: waking more would only have them find the slot taken.
        self._wake(1)

    def connection_changed(self, connection: Http2Connection) -> None:
        """Ready, new stream limit, or no longer taking requests."""
        if connection.accepting:
            self._wake(connection.free_streams)
            return
        # Out of the pool, but still answering its last streams: kept so that close() can close it.
        if connection.closed:
            if self._draining is not None:
                self._draining.discard(connection)
        else:
            if self._draining is None:
                self._draining = set()
            self._draining.add(connection)
        if connection in self._connections:
            # It drains its answered streams on its own; all waiting re-check, and one opens a replacement.
            self._connections.remove(connection)
            self._wake_all()

    async def _open(self) -> None:
        try:
            self._connections.append(await self._connect())
            self._connect_error = None
        except ProviderError as e:
            self._connect_error = e
        finally:
            self._opening = None
            self._wake_all()

    async def _connect(self) -> Http2Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                connection = Http2Connection(
                    self.origin, self._streams_per_connection, self, self._request_timeout_s
                )
                await self._open_transport(loop, connection)
                await self._until_ready(connection)
        except ssl.SSLCertVerificationError:
            raise ConnectionFailed(
                f"TLS: {self.origin.host} presented a certificate we do not trust"
            ) from None
        except ssl.SSLError as e:
            raise _translate_tls_error(e, self.origin) from None
        except TimeoutError:
            raise ConnectionFailed(f"timed out connecting to {self.origin.host}:{self.origin.port}") from None
        except OSError as e:
            raise ConnectionFailed(
                f"cannot connect to {self.origin.host}:{self.origin.port}: {e.strerror}"
            ) from None
        logger.debug("HTTP/2 connection %d to %s open", len(self._connections) + 1, self.origin.host)
        return connection

    async def _open_transport(self, loop: asyncio.AbstractEventLoop, connection: Http2Connection) -> None:
        """TCP, then TLS as `create_connection(ssl=...)` does it, but with `_TlsLayer`'s smaller buffer."""
        host, port = self.origin.host, self.origin.port
        if self._ssl_context is None:
            await loop.create_connection(lambda: connection, host, port)
            return
        handshake: asyncio.Future[None] = loop.create_future()
        context = self._ssl_context
        unbuilt: list[Exception] = []

        def tls_layer() -> asyncio.BaseProtocol:
            # Built once TCP is connected: a layer never connected would leave its transport unclosed. It
            # makes its TLS object as it is built, and asyncio does not close the connected socket of a
            # factory that raises: a stand-in takes the socket and closes it.
            try:
                return _TlsLayer(loop, connection, context, handshake, server_hostname=host)
            except Exception as e:
                unbuilt.append(e)
                return _Unbuilt()

        transport, _ = await loop.create_connection(tls_layer, host, port)
        if unbuilt:
            raise unbuilt[0]
        try:
            await handshake
        except BaseException:
            transport.abort()
            raise

    async def _until_ready(self, connection: Http2Connection) -> None:
        try:
            self._check_alpn(connection)
            await connection.wait_ready()
        except BaseException:
            # Failed, timed out or cancelled (the pool closing) between TCP connect and the server's SETTINGS.
            if connection.transport is not None:
                connection.transport.abort()
            raise

    def _check_alpn(self, connection: Http2Connection) -> None:
        transport = connection.transport
        if self._ssl_context is None or transport is None:
            return
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            raise ConnectionFailed(f"{self.origin.host} does not offer HTTP/2")

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop taking requests; let those in flight finish (at most `grace_s`); close all connections."""
        self._closed = True
        self._wake_all()
        if self._opening is not None:
            self._opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._opening
        connections = [*self._connections, *(self._draining or ())]
        self._connections, self._draining = [], None
        await asyncio.gather(*(connection.close(grace_s) for connection in connections))


class _Unbuilt(asyncio.Protocol):
    """Stands for a TLS layer that could not be built: closes the connection asyncio hands it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _TlsLayer(asyncio.sslproto.SSLProtocol):
    """asyncio's own TLS layer (what `create_connection(ssl=...)` stacks), reading `_TLS_READ_BYTES` at a
    time instead of 256 KiB, into one buffer that all the connections of its thread share.

    asyncio gives each connection a read buffer of its own for good, though it holds bytes only from the
    socket's `recv_into` to `buffer_updated`, which copies them into the TLS object's memory BIO: the event
    loop calls the two back to back on its thread (`_SelectorSocketTransport._read_ready__get_buffer`), so
    no other connection of that thread reads in between. With 1,000 organizations' connections in one
    process, 16 MB of buffers become 16 KiB.
    """

    max_size = _TLS_READ_BYTES

    # asyncio's layer sets 32 attributes (Python 3.11), more than an instance's values can share their keys
    # with the class's other instances (30): each layer got a dict of its own, 1.5 KiB. Its attributes held
    # in slots instead (a slot set in the base class's code is still the slot's) leave the dict the few the
    # handshake sets later. Not the three it gives class defaults (`_handshake_timeout_handle`...): a slot
    # would hide the default. Checked against asyncio's sslproto of 3.11, 3.12 and 3.13 (pyproject's range);
    # tests/integration/providers/test_tls_memory.py fails when this Python's layer sets more.
    __slots__ = (
        "_app_protocol",
        "_app_protocol_is_buffer",
        "_app_reading_paused",
        "_app_state",
        "_app_transport",
        "_app_transport_created",
        "_app_writing_paused",
        "_conn_lost",
        "_eof_received",
        "_extra",
        "_incoming",
        "_incoming_high_water",
        "_incoming_low_water",
        "_loop",
        "_outgoing",
        "_outgoing_high_water",
        "_outgoing_low_water",
        "_server_hostname",
        "_server_side",
        "_ssl_buffer",
        "_ssl_buffer_view",
        "_ssl_handshake_timeout",
        "_ssl_reading_paused",
        "_ssl_shutdown_timeout",
        "_ssl_writing_paused",
        "_sslcontext",
        "_sslobj",
        "_state",
        "_transport",
        "_waiter",
        "_write_backlog",
        "_write_buffer_size",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        app_protocol: asyncio.BaseProtocol,
        context: TlsContext,
        waiter: asyncio.Future[None],
        *,
        server_hostname: str,
    ) -> None:
        # asyncio asks its context only for `wrap_bio`, the TLS object: a ClientCertificateContext makes one
        # that presents its own client certificate.
        super().__init__(
            loop, app_protocol, cast(ssl.SSLContext, context), waiter, server_hostname=server_hostname
        )
        self._ssl_buffer_view = _thread_read_buffer()  # the private one just made is dropped
        self._ssl_buffer = bytearray()
        # asyncio's backlog of data written before the TLS object takes it: a deque, which allocates its
        # first block (0.7 KiB) when made. asyncio only appends to it, clears it, tests it and reads,
        # replaces or deletes its first item (`_do_write`), as a list does too; once the handshake is done
        # each write empties it at once, and the HTTP/2 connection writes nothing before that.
        self._write_backlog: Any = []

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        super()._on_handshake_complete(handshake_exc)
        # asyncio keeps the server's certificate decoded to a dict (some 3 KB), and the cipher suite's name,
        # protocol and bits, for `get_extra_info`, which nothing here asks for: the handshake has verified
        # the certificate, and ALPN is read from the TLS object.
        for name in ("peercert", "cipher"):
            self._extra.pop(name, None)

    def get_buffer(self, n: int) -> memoryview:
        # This thread's, whichever thread built the layer; `buffer_updated` reads the same view.
        self._ssl_buffer_view = _thread_read_buffer()
        return self._ssl_buffer_view


def _thread_read_buffer() -> memoryview:
    view: memoryview | None = getattr(_thread_read_buffers, "view", None)
    if view is None:
        view = _thread_read_buffers.view = memoryview(bytearray(_TLS_READ_BYTES))
    return view


def _translate_tls_error(error: ssl.SSLError, origin: Origin) -> ProviderError:
    reason = error.reason or type(error).__name__
    # The server refused our client certificate during the handshake (revoked, expired, unknown CA).
    if "ALERT" in reason and "CERTIFICATE" in reason:
        return CredentialRejected(f"TLS: {origin.host} refused the client certificate ({reason})")
    return ConnectionFailed(f"TLS with {origin.host} failed ({reason})")


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` in seconds, from either of its forms (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
