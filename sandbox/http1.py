"""HTTP/1.1 beside HTTP/2: one h11 connection per client, answered by the same `Request -> Response` handlers.

Google's OAuth and FCM endpoints and Pushy serve HTTP/1.1 too, and the widely used clients (google-auth,
requests, pyfcm) speak nothing else, so the FCM and AOSP emulators answer it on their HTTP/2 ports. h11 does
the parsing: keep-alive, pipelining, Content-Length and chunked bodies, `Connection: close`, HTTP/1.0.
A request h11 cannot read is answered with its status hint (400, or 431 for an oversized head) and the
connection closed. Latency is injected per request; error rates and storms come from the handlers, as over
HTTP/2. GOAWAY and the stream limit have no HTTP/1.1 counterpart and do not apply.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import urlsplit

import h11

from sandbox.faults import FaultRuntime, Garbage
from sandbox.http2 import MAX_REQUEST_BODY, ConnectionInfo, Handler, Request, Response

log = logging.getLogger(__name__)

MAX_REQUEST_HEAD = 64 * 1024  # request line and header fields; past it h11 answers 431
_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}


class H1Protocol(asyncio.Protocol):
    """One HTTP/1.1 connection, server side: requests are answered one at a time, in order."""

    def __init__(
        self,
        handler: Handler,
        faults: FaultRuntime,
        on_open: Callable[[H1Protocol], None],
        on_close: Callable[[H1Protocol], None],
    ) -> None:
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        self.handler = handler
        self.faults = faults
        self.on_open = on_open
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.info = ConnectionInfo()
        self.loop = asyncio.get_running_loop()
        self._head: h11.Request | None = None
        self._body = bytearray()
        self._delayed: asyncio.TimerHandle | None = None  # an answer held back by injected latency
        self._close_after_answer = False

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.on_open(self)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.info.tls = True
            self.info.peer_certificate = ssl_object.getpeercert(binary_form=True)

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._read_events()

    def eof_received(self) -> None:
        self.conn.receive_data(b"")  # a request cut short becomes a RemoteProtocolError: 400
        self._read_events()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._delayed is not None:
            self._delayed.cancel()
            self._delayed = None
        self.on_close(self)

    # -- requests --------------------------------------------------------------------------------

    def _read_events(self) -> None:
        # While an answer is delayed, later (pipelined) requests wait in h11's buffer.
        while self._delayed is None and not self._closing:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as error:
                self._refuse(error.error_status_hint)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._begin(event)
            elif isinstance(event, h11.Data):
                self._receive_body(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch()
            elif isinstance(event, h11.ConnectionClosed):
                self._close_transport()

    def _begin(self, head: h11.Request) -> None:
        self._head, self._body = head, bytearray()
        length = next((value for name, value in head.headers if name == b"content-length"), b"0")
        if int(length) > MAX_REQUEST_BODY:  # h11 has checked that it is a number
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        elif self.conn.they_are_waiting_for_100_continue:
            self._write(
                self.conn.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue"))
            )

    def _receive_body(self, data: bytes) -> None:
        self._body += data
        if len(self._body) > MAX_REQUEST_BODY:  # a chunked body has no length up front
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)

    def _dispatch(self) -> None:
        garbage = self.faults.pick_garbage()
        if garbage is not None and garbage.kind is Garbage.truncated:
            # An answer that announces 64 bytes of body, carries 10, and then the connection is gone.
            self._write(
                b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 64\r\n\r\n{"name": '
            )
            self._close_transport()  # after what was written: the client reads a body cut short
            return
        if garbage is not None:
            content_type, body = garbage.response_body()
            self._answer(Response(garbage.status, (("content-type", content_type),), body))
            return
        response = self._handle()
        delay_s = self.faults.delay_s()
        if delay_s > 0 and self.transport is not None:
            self.transport.pause_reading()
            self._delayed = self.loop.call_later(delay_s, self._answer_delayed, response)
        else:
            self._answer(response)

    def _handle(self) -> Response:
        try:
            return self.handler(self._request())
        except Exception:
            log.exception("sandbox handler failed")
            return Response(500)

    def _request(self) -> Request:
        head = self._head
        assert head is not None
        headers = tuple(
            (name.decode("ascii"), value.decode("utf-8", "replace")) for name, value in head.headers
        )
        host = next((value for name, value in headers if name == "host"), "")
        path, authority = _origin_form(head.target.decode("ascii", "replace"), host)
        return Request(head.method.decode("ascii"), path, authority, headers, bytes(self._body), self.info)

    # -- responses -------------------------------------------------------------------------------

    def _answer_delayed(self, response: Response) -> None:
        self._delayed = None
        if self._closing:
            return
        assert self.transport is not None
        self._answer(response)
        self.transport.resume_reading()
        self._read_events()

    def _answer(self, response: Response) -> None:
        headers = [*response.headers, ("content-length", str(len(response.body)))]
        if self._close_after_answer:
            headers.append(("connection", "close"))
        reason = _REASONS.get(response.status, b"")
        data = [self.conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))]
        if response.body and self._head is not None and self._head.method != b"HEAD":
            data.append(self.conn.send(h11.Data(data=response.body)))
        data.append(self.conn.send(h11.EndOfMessage()))
        self._write(b"".join(d for d in data if d is not None))
        if self.conn.our_state is h11.MUST_CLOSE:  # the client or we said Connection: close, or HTTP/1.0
            self._close_transport()
        else:
            self.conn.start_next_cycle()

    def _refuse(self, status: int) -> None:
        """Answer a request that cannot be read and hang up: what follows it on the wire cannot be trusted."""
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            headers = [("content-length", "0"), ("connection", "close")]
            response = h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b""))
            self._write(self.conn.send(response))
            self._write(self.conn.send(h11.EndOfMessage()))
        self._close_transport()

    # -- shutdown --------------------------------------------------------------------------------

    def close_gracefully(self) -> None:
        """Close now if idle; otherwise answer the request under way with `Connection: close`, then close."""
        if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:
            self._close_transport()
        else:
            self._close_after_answer = True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    @property
    def _closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def _close_transport(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _write(self, data: bytes | None) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


def _origin_form(target: str, host: str) -> tuple[str, str]:
    """The path with its query, and the authority: from an absolute-form target (RFC 9112 3.2.2) if given."""
    if not target.startswith(("http://", "https://")):
        return target, host
    parts = urlsplit(target)
    path = parts.path or "/"
    return (f"{path}?{parts.query}" if parts.query else path), parts.netloc
