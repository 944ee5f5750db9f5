"""The emulators' HTTP/2 connection, sans I/O, against h2's client side and hand-made frames."""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from h2.errors import ErrorCodes

from sandbox.h2_connection import PREFACE, ProtocolViolation, ServerConnection
from sandbox.hpack_decoder import Header

REQUEST = [(":method", "POST"), (":scheme", "http"), (":authority", "localhost"), (":path", "/3/device/ab")]


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[int, dict[bytes, bytes], bool]] = []
        self.data: list[tuple[int, bytes, bool]] = []
        self.resets: list[int] = []
        self.goaway = False

    def request_received(self, stream_id: int, headers: list[Header], end_stream: bool) -> None:
        self.requests.append((stream_id, dict(headers), end_stream))

    def data_received_on(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self.data.append((stream_id, data, end_stream))

    def stream_reset(self, stream_id: int) -> None:
        self.resets.append(stream_id)

    def window_opened(self, stream_id: int) -> None:
        pass

    def goaway_received(self) -> None:
        self.goaway = True


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">BHBBL", len(payload) >> 16, len(payload) & 0xFFFF, frame_type, flags, stream_id)
        + payload
    )


def pair(max_streams: int = 100) -> tuple[h2.connection.H2Connection, ServerConnection, Recorder]:
    recorder = Recorder()
    server = ServerConnection(recorder, max_concurrent_streams=max_streams, initial_window=1 << 20)
    server.initiate()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    events = exchange(client, server)
    assert any(isinstance(e, h2.events.SettingsAcknowledged) for e in events)
    return client, server, recorder


def exchange(client: h2.connection.H2Connection, server: ServerConnection) -> list[h2.events.Event]:
    server.receive(client.data_to_send())
    return client.receive_data(server.data_to_send())


def test_a_request_and_its_answer_with_settings_acknowledged() -> None:
    client, server, recorder = pair()
    client.send_headers(1, [*REQUEST, ("apns-topic", "t")])
    client.send_data(1, b'{"mdm": "x"}', end_stream=True, pad_length=7)
    exchange(client, server)
    assert recorder.requests == [
        (1, {**{k.encode(): v.encode() for k, v in REQUEST}, b"apns-topic": b"t"}, False)
    ]
    assert recorder.data == [(1, b'{"mdm": "x"}', True)]
    server.send_headers(1, b"\x88", end_stream=True)
    events = client.receive_data(server.data_to_send())
    assert any(
        isinstance(e, h2.events.ResponseReceived) and e.headers == [(b":status", b"200")] for e in events
    )
    assert not server.streams


def test_a_header_block_split_over_continuation_frames() -> None:
    client, server, recorder = pair()
    client.send_headers(1, [*REQUEST, ("x-big", "v" * 40_000)], end_stream=True)
    exchange(client, server)
    assert recorder.requests[0][1][b"x-big"] == b"v" * 40_000


def test_ping_is_answered_and_unknown_frames_are_ignored() -> None:
    client, server, _ = pair()
    server.receive(frame(0xFA, 0, 0, b"whatever") + frame(6, 0, 0, b"12345678"))
    events = client.receive_data(server.data_to_send())
    assert any(isinstance(e, h2.events.PingAckReceived) and e.ping_data == b"12345678" for e in events)


@pytest.mark.parametrize(
    ("data", "error_code"),
    [
        pytest.param(frame(0, 1, 9, b"x"), ErrorCodes.PROTOCOL_ERROR, id="data-on-an-idle-stream"),
        pytest.param(frame(1, 5, 2, b"\x88"), ErrorCodes.PROTOCOL_ERROR, id="even-stream"),
        pytest.param(frame(1, 5, 1, b"\x80"), ErrorCodes.COMPRESSION_ERROR, id="undecodable-headers"),
        pytest.param(frame(5, 0, 1, b"\x00\x00\x00\x03"), ErrorCodes.PROTOCOL_ERROR, id="push-promise"),
        pytest.param(
            frame(8, 0, 0, b"\x7f\xff\xff\xff"), ErrorCodes.FLOW_CONTROL_ERROR, id="window-overflow"
        ),
        pytest.param(
            frame(4, 0, 0, b"\x00\x05\x00\x00\x00\x01"), ErrorCodes.PROTOCOL_ERROR, id="tiny-frame-size"
        ),
        pytest.param(frame(6, 0, 0, b"1234"), ErrorCodes.FRAME_SIZE_ERROR, id="short-ping"),
        pytest.param(frame(0, 0, 1, b"x" * 16_385), ErrorCodes.FRAME_SIZE_ERROR, id="oversized-frame"),
        pytest.param(
            frame(1, 0, 1, b"\x82") + frame(6, 0, 0, b"12345678"), ErrorCodes.PROTOCOL_ERROR, id="cut-block"
        ),
    ],
)
def test_connection_errors_say_goaway_with_their_code(data: bytes, error_code: ErrorCodes) -> None:
    client, server, _ = pair()
    with pytest.raises(ProtocolViolation):
        server.receive(data)
    events = client.receive_data(server.data_to_send())
    assert [e.error_code for e in events if isinstance(e, h2.events.ConnectionTerminated)] == [error_code]
    server.receive(frame(6, 0, 0, b"12345678"))  # nothing is read after a connection error
    assert server.data_to_send() == b""


def test_a_client_that_is_not_http2_is_refused() -> None:
    server = ServerConnection(Recorder(), max_concurrent_streams=10, initial_window=1 << 20)
    with pytest.raises(ProtocolViolation):
        server.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    server = ServerConnection(Recorder(), max_concurrent_streams=10, initial_window=1 << 20)
    server.receive(PREFACE[:10])  # a preface may arrive in pieces
    server.receive(PREFACE[10:])


def test_more_streams_than_advertised_is_a_connection_error() -> None:
    client, server, recorder = pair(max_streams=2)
    client.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 10
    client.remote_settings.acknowledge()
    for stream_id in (1, 3, 5):
        client.send_headers(stream_id, REQUEST)
    with pytest.raises(ProtocolViolation):
        server.receive(client.data_to_send())
    assert [r[0] for r in recorder.requests] == [1, 3]


def test_a_stream_reset_by_the_client_is_reported_and_closed() -> None:
    client, server, recorder = pair()
    client.send_headers(1, REQUEST)
    client.reset_stream(1)
    exchange(client, server)
    assert recorder.resets == [1]
    assert not server.streams


def test_response_bodies_wait_for_the_clients_window() -> None:
    client, server, _ = pair()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    client.send_headers(1, REQUEST, end_stream=True)
    exchange(client, server)
    server.send_headers(1, b"\x88", end_stream=False)
    assert server.send_window(1) == 10
    server.send_data(1, b"0123456789", end_stream=False)
    assert server.send_window(1) == 0
    client.receive_data(server.data_to_send())
    client.increment_flow_control_window(5, stream_id=1)
    exchange(client, server)
    assert server.send_window(1) == 5


def test_frames_the_client_sent_before_seeing_our_reset_are_ignored() -> None:
    client, server, recorder = pair()
    client.send_headers(1, REQUEST)
    exchange(client, server)
    server.reset_stream(1, ErrorCodes.REFUSED_STREAM)
    server.receive(frame(0, 1, 1, b"late"))  # DATA with END_STREAM, in flight when we reset
    assert recorder.data == []
    events = client.receive_data(server.data_to_send())
    assert [e.error_code for e in events if isinstance(e, h2.events.StreamReset)] == [
        ErrorCodes.REFUSED_STREAM
    ]
