"""One listening port for one handler: HTTP/2, and HTTP/1.1 beside it where the real service offers both.

With HTTP/1.1 on, each connection starts with `_ProtocolSniffer`, which picks the protocol once: over TLS by
ALPN (`h2` preferred, `http/1.1` offered too), over cleartext (or TLS without ALPN) by the first bytes: the
HTTP/2 connection preface means prior-knowledge HTTP/2, anything else HTTP/1.1. It then hands the transport
to `H2Protocol` or `H1Protocol` and is out of the way: the HTTP/2 hot path is the same as without it.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Protocol

from sandbox.faults import FaultRuntime
from sandbox.h2_connection import PREFACE
from sandbox.http1 import H1Protocol
from sandbox.http2 import H2Protocol, Handler


class ServedConnection(Protocol):
    """What the server needs of a connection, whatever its protocol."""

    def close_gracefully(self) -> None: ...  # answer what is under way, then close

    def abort(self) -> None: ...


class _ProtocolSniffer(asyncio.Protocol):
    """A connection whose protocol is not known yet: ALPN or its first bytes decide, then it hands over."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self._received = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connection_opened(self)  # counted, so that close() waits for it too
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn == "h2":
            self._hand_over(self.server.new_h2())
        elif alpn == "http/1.1":
            self._hand_over(self.server.new_h1())

    def data_received(self, data: bytes) -> None:
        self._received += data
        if len(self._received) < len(PREFACE) and PREFACE.startswith(self._received):
            return  # a preface may come in pieces
        is_h2 = self._received.startswith(PREFACE)
        self._hand_over(self.server.new_h2() if is_h2 else self.server.new_h1())

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connection_closed(self)

    @property
    def received(self) -> int:
        """Bytes read while the protocol is still undecided."""
        return len(self._received)

    def _hand_over(self, protocol: H2Protocol | H1Protocol) -> None:
        transport = self.transport
        assert transport is not None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)  # registers the new protocol before the sniffer leaves
        self.server.connection_closed(self)
        if self._received:
            protocol.data_received(bytes(self._received))
            self._received.clear()

    def close_gracefully(self) -> None:
        if self.transport is not None:
            self.transport.close()  # nothing was asked yet, so nothing is owed

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class HttpServer:
    """Serves one handler on one port; `close()` lets every client finish what it asked, then closes.

    `http1=False` serves HTTP/2 only, as APNs does: an HTTP/1.1 client gets a GOAWAY (PROTOCOL_ERROR).
    """

    def __init__(
        self,
        handler: Handler,
        faults: FaultRuntime,
        *,
        ssl_context: ssl.SSLContext | None = None,
        http1: bool = False,
    ) -> None:
        self.handler = handler
        self.faults = faults
        self.ssl_context = ssl_context
        self.http1 = http1
        self.connections: set[ServedConnection] = set()
        self._server: asyncio.Server | None = None
        self._all_closed = asyncio.Event()

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        factory = self._new_sniffer if self.http1 else self.new_h2
        self._server = await loop.create_server(factory, host, port, ssl=self.ssl_context)
        sockname = self._server.sockets[0].getsockname()
        return int(sockname[1])

    def _new_sniffer(self) -> _ProtocolSniffer:
        return _ProtocolSniffer(self)

    def new_h2(self) -> H2Protocol:
        return H2Protocol(self.handler, self.faults, self.connection_opened, self.connection_closed)

    def new_h1(self) -> H1Protocol:
        return H1Protocol(self.handler, self.faults, self.connection_opened, self.connection_closed)

    def connection_opened(self, connection: ServedConnection) -> None:
        self.connections.add(connection)
        self._all_closed.clear()

    def connection_closed(self, connection: ServedConnection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self._all_closed.set()

    def close_all_gracefully(self) -> None:
        for connection in list(self.connections):
            connection.close_gracefully()

    async def close(self, *, grace_s: float = 5.0) -> None:
        if self._server is None:
            return
        self._server.close()
        self.close_all_gracefully()
        if self.connections:
            try:
                await asyncio.wait_for(self._all_closed.wait(), grace_s)
            except TimeoutError:
                for connection in list(self.connections):
                    connection.abort()
        await self._server.wait_closed()
        self._server = None
