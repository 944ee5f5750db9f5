"""The client side of HTTP/2 (`workers.providers.h2_client`) against h2's own server connection: answers with
bodies and in CONTINUATION frames, flow control both ways, resets, GOAWAY, PING and a server that breaks the
protocol. The emulators' end to end: tests/integration/providers."""

from __future__ import annotations

from typing import TypeVar

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from h2.errors import ErrorCodes

from workers.providers.h2_client import ClientConnection, ProtocolViolation

E = TypeVar("E", bound=h2.events.Event)
REQUEST = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/3/device/ab"), (b":authority", b"x")]


class Recorder:
    """What a client connection told its listener."""

    def __init__(self) -> None:
        self.headers: dict[int, list[tuple[bytes, bytes]]] = {}
        self.bodies: dict[int, bytes] = {}
        self.ended: list[int] = []
        self.resets: dict[int, int] = {}
        self.settings = 0
        self.windows = 0
        self.goaway: tuple[int, int] | None = None

    def response_received(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers[stream_id] = headers

    def data_received_on(self, stream_id: int, data: bytes) -> None:
        self.bodies[stream_id] = self.bodies.get(stream_id, b"") + data

    def stream_ended(self, stream_id: int) -> None:
        self.ended.append(stream_id)

    def stream_reset(self, stream_id: int, error_code: int) -> None:
        self.resets[stream_id] = error_code

    def settings_changed(self) -> None:
        self.settings += 1

    def window_opened(self) -> None:
        self.windows += 1

    def goaway_received(self, last_stream_id: int, error_code: int) -> None:
        self.goaway = (last_stream_id, error_code)


class Pair:
    """A client connection and h2's server connection, bytes carried between them by hand."""

    def __init__(self, *, server_window: int | None = None) -> None:
        self.recorder = Recorder()
        self.client = ClientConnection(self.recorder, receive_window=1 << 24)
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.server = h2.connection.H2Connection(config)
        self.client.initiate()
        self.server.initiate_connection()
        if server_window is not None:
            self.server.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: server_window})
        self.events: list[h2.events.Event] = []
        self.exchange()

    def exchange(self) -> None:
        """Until neither side has anything more to say."""
        while True:
            to_server, to_client = self.client.data_to_send(), self.server.data_to_send()
            if not to_server and not to_client:
                return
            if to_server:
                self.events += self.server.receive_data(to_server)
            if to_client:
                self.client.receive(to_client)

    def received(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


def test_requests_and_their_answers_with_bodies_and_continuation_frames() -> None:
    pair = Pair()
    assert pair.recorder.settings == 1
    first = pair.client.send_request(REQUEST, end_stream=True)
    second = pair.client.send_request(REQUEST, end_stream=False)
    pair.client.send_data(second, b'{"mdm":"magic"}', end_stream=True)
    pair.exchange()
    assert [e.stream_id for e in pair.received(h2.events.RequestReceived)] == [first, second]
    assert [e.data for e in pair.received(h2.events.DataReceived)] == [b'{"mdm":"magic"}']
    pair.server.send_headers(first, [(b":status", b"200"), (b"apns-id", b"id-1")], end_stream=True)
    # An answer's header block past one frame goes on in CONTINUATION frames.
    large = [(b":status", b"400"), (b"x-padding", b"p" * 40_000)]
    pair.server.send_headers(second, large)
    pair.server.send_data(second, b'{"reason":"BadDeviceToken"}', end_stream=True)
    pair.exchange()
    assert pair.recorder.headers == {first: [(b":status", b"200"), (b"apns-id", b"id-1")], second: large}
    assert pair.recorder.bodies == {second: b'{"reason":"BadDeviceToken"}'}
    assert pair.recorder.ended == [first, second]
    assert not pair.client.streams


def test_an_informational_response_is_skipped_for_the_final_one() -> None:
    pair = Pair()
    stream_id = pair.client.send_request(REQUEST, end_stream=True)
    pair.exchange()
    pair.server.send_headers(stream_id, [(b":status", b"100")])
    pair.server.send_headers(stream_id, [(b":status", b"200")], end_stream=True)
    pair.exchange()
    assert pair.recorder.headers == {stream_id: [(b":status", b"200")]}
    assert pair.recorder.ended == [stream_id]


def test_a_body_waits_for_the_servers_window_and_goes_when_it_opens() -> None:
    pair = Pair(server_window=10)
    stream_id = pair.client.send_request(REQUEST, end_stream=False)
    assert pair.client.send_window(stream_id) == 10
    pair.client.send_data(stream_id, b"0123456789", end_stream=False)
    assert pair.client.send_window(stream_id) == 0
    pair.exchange()
    windows = pair.recorder.windows
    pair.server.acknowledge_received_data(10, stream_id)
    pair.server.increment_flow_control_window(100, stream_id=stream_id)
    pair.exchange()
    assert pair.recorder.windows > windows
    assert pair.client.send_window(stream_id) == 110
    pair.client.send_data(stream_id, b"rest", end_stream=True)
    pair.exchange()
    assert b"".join(e.data for e in pair.received(h2.events.DataReceived)) == b"0123456789rest"


def test_answers_larger_than_the_default_window_are_taken_whole() -> None:
    pair = Pair()
    stream_id = pair.client.send_request(REQUEST, end_stream=True)
    pair.exchange()
    pair.server.send_headers(stream_id, [(b":status", b"200")])
    body = b"b" * 200_000  # past the 65,535 octets both windows start with
    for offset in range(0, len(body), 16_384):
        pair.server.send_data(stream_id, body[offset : offset + 16_384])
        pair.exchange()
    pair.server.end_stream(stream_id)
    pair.exchange()
    assert pair.recorder.bodies[stream_id] == body


def test_resets_and_a_goaway_reach_the_listener_and_late_frames_are_ignored() -> None:
    pair = Pair()
    reset, cancelled, answered, unprocessed = (
        pair.client.send_request(REQUEST, end_stream=True) for _ in range(4)
    )
    pair.exchange()
    pair.server.reset_stream(reset, ErrorCodes.REFUSED_STREAM)
    pair.client.reset_stream(cancelled, ErrorCodes.CANCEL)
    pair.exchange()
    assert pair.recorder.resets == {reset: ErrorCodes.REFUSED_STREAM}
    assert [e.stream_id for e in pair.received(h2.events.StreamReset)] == [cancelled]
    pair.server.send_headers(answered, [(b":status", b"200")], end_stream=True)
    pair.server.close_connection(ErrorCodes.NO_ERROR, last_stream_id=answered)
    pair.exchange()
    assert pair.recorder.ended == [answered]
    assert pair.recorder.goaway == (answered, ErrorCodes.NO_ERROR)
    assert unprocessed in pair.client.streams  # the listener fails it; the protocol layer only reports


def test_a_ping_is_answered() -> None:
    pair = Pair()
    pair.server.ping(b"12345678")
    pair.exchange()
    assert [e.ping_data for e in pair.received(h2.events.PingAckReceived)] == [b"12345678"]


def test_a_server_that_breaks_the_protocol_gets_a_goaway_and_the_error() -> None:
    pair = Pair()
    # DATA on a stream the client never opened.
    with pytest.raises(ProtocolViolation):
        pair.client.receive(b"\x00\x00\x01\x00\x00\x00\x00\x00\x07x")
    pair.events += pair.server.receive_data(pair.client.data_to_send())
    (terminated,) = pair.received(h2.events.ConnectionTerminated)
    assert terminated.error_code == ErrorCodes.PROTOCOL_ERROR
