"""HTTP/1.1 beside HTTP/2 on the FCM and AOSP ports: sniffing, ALPN, keep-alive, bodies, errors, faults."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import h2.config
import h2.connection
import h2.events
import pytest
import requests

from sandbox import FaultConfig, Latency, Sandbox, SandboxThread, Storm
from sandbox.http1 import H1Protocol
from sandbox.http2 import MAX_REQUEST_BODY, H2Protocol
from sandbox.http_server import _ProtocolSniffer
from sandbox.testing import AOSP_KEY, AOSP_OFFLINE, AOSP_TOKEN, World, connect, in_sandbox
from sandbox.tls import ServerTls

PUSH = json.dumps({"to": AOSP_TOKEN, "data": {"wake": "1"}}).encode()

Answer = tuple[int, dict[str, str], bytes]


def http1_request(method: str, target: str, body: bytes = b"", *extra: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *extra]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_answer(reader: BinaryIO) -> Answer:
    status_line = reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


@contextmanager
def raw_connection(port: int) -> Iterator[tuple[socket.socket, BinaryIO]]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, sock.makefile("rb") as reader:
        yield sock, reader


@contextmanager
def tls_connection(port: int, tls: ServerTls, alpn: list[str] | None) -> Iterator[ssl.SSLSocket]:
    context = ssl.create_default_context(cadata=tls.ca_pem.decode("ascii"))
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as plain,
        context.wrap_socket(plain, server_hostname="localhost") as sock,
    ):
        yield sock


def test_keep_alive_answers_several_requests_on_one_connection(world: World) -> None:
    with SandboxThread(world.registry) as sandbox, raw_connection(sandbox.ports["aosp"]) as (sock, reader):
        sock.sendall(http1_request("POST", f"/push?api_key={AOSP_KEY}", PUSH))
        status, headers, body = read_answer(reader)
        assert (status, headers["content-type"]) == (200, "application/json; charset=utf-8")
        push_id = json.loads(body)["id"]
        for _ in range(3):
            sock.sendall(http1_request("GET", f"/pushes/{push_id}?api_key={AOSP_KEY}"))
            status, headers, body = read_answer(reader)
            assert status == 200
            assert "connection" not in headers
            assert json.loads(body)["push"]["payload"] == {"wake": "1"}
        connections = sandbox.servers["aosp"].connections
        assert len(connections) == 1
        assert all(isinstance(c, H1Protocol) for c in connections)


def test_pipelined_requests_are_answered_in_order(world: World) -> None:
    with SandboxThread(world.registry) as sandbox, raw_connection(sandbox.ports["aosp"]) as (sock, reader):
        missing = http1_request("GET", f"/pushes/nope?api_key={AOSP_KEY}")
        sock.sendall(http1_request("POST", f"/push?api_key={AOSP_KEY}", PUSH) + missing)
        assert read_answer(reader)[0] == 200
        status, _, body = read_answer(reader)
        assert (status, json.loads(body)["code"]) == (404, "INVALID_PUSH_ID")


def test_chunked_request_body(world: World) -> None:
    head = http1_request("POST", f"/push?api_key={AOSP_KEY}", b"", "Transfer-Encoding: chunked")
    chunks = [PUSH[:10], PUSH[10:]]
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    with SandboxThread(world.registry) as sandbox, raw_connection(sandbox.ports["aosp"]) as (sock, reader):
        sock.sendall(head)
        sock.sendall(body)
        status, _, answer = read_answer(reader)
        assert (status, json.loads(answer)["info"]) == (200, {"devices": 1})


def test_expect_100_continue_is_honoured(world: World) -> None:
    head = http1_request("POST", f"/push?api_key={AOSP_KEY}", b"", f"Content-Length: {len(PUSH)}")
    head = head.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
    with SandboxThread(world.registry) as sandbox, raw_connection(sandbox.ports["aosp"]) as (sock, reader):
        sock.sendall(head)
        assert reader.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert reader.readline() == b"\r\n"
        sock.sendall(PUSH)
        assert read_answer(reader)[0] == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"this is not HTTP\r\n\r\n",
        b"GET /pushes/x HTTP/1.1\r\n\r\n",  # no Host
        b"POST /push HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
    ],
)
def test_a_malformed_request_is_answered_400_and_the_connection_closed(
    world: World, request_bytes: bytes
) -> None:
    with SandboxThread(world.registry) as sandbox, raw_connection(sandbox.ports["aosp"]) as (sock, reader):
        sock.sendall(request_bytes)
        status, headers, _ = read_answer(reader)
        assert (status, headers["connection"]) == (400, "close")
        assert reader.read() == b""


def test_a_body_over_the_limit_is_answered_413(world: World) -> None:
    with SandboxThread(world.registry) as sandbox, raw_connection(sandbox.ports["aosp"]) as (sock, reader):
        sock.sendall(http1_request("POST", "/push", b"", f"Content-Length: {MAX_REQUEST_BODY + 1}"))
        assert read_answer(reader)[0] == 413
        assert reader.read() == b""


def test_connection_close_and_http_1_0_are_honoured(world: World) -> None:
    status_target = f"/pushes/nope?api_key={AOSP_KEY}"
    with SandboxThread(world.registry) as sandbox:
        with raw_connection(sandbox.ports["aosp"]) as (sock, reader):
            sock.sendall(http1_request("GET", status_target, b"", "Connection: close"))
            assert read_answer(reader)[1]["connection"] == "close"
            assert reader.read() == b""
        with raw_connection(sandbox.ports["aosp"]) as (sock, reader):
            sock.sendall(f"GET {status_target} HTTP/1.0\r\n\r\n".encode())
            assert reader.readline().startswith(b"HTTP/1.1 404 ")
            assert b'"code": "INVALID_PUSH_ID"' in reader.read()  # and then closed


def test_absolute_form_target_is_accepted(world: World) -> None:
    with SandboxThread(world.registry) as sandbox, raw_connection(sandbox.ports["aosp"]) as (sock, reader):
        target = f"http://127.0.0.1:{sandbox.ports['aosp']}/push?api_key={AOSP_KEY}"
        sock.sendall(http1_request("POST", target, PUSH))
        assert read_answer(reader)[0] == 200


def test_cleartext_sniffing_sends_the_http2_preface_to_http2_even_in_pieces(world: World) -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    preface = client.data_to_send()

    async def body(sandbox: Sandbox) -> None:
        server = sandbox.servers["fcm"]
        reader, writer = await asyncio.open_connection("127.0.0.1", sandbox.ports["fcm"])
        writer.write(preface[:7])  # a prefix of the preface: no decision yet
        await writer.drain()
        # Client and server share this loop: wait until the server has read the prefix, and check it waits.
        while not any(isinstance(c, _ProtocolSniffer) and c.received == 7 for c in server.connections):
            await asyncio.sleep(0.001)
        assert not any(isinstance(c, H2Protocol | H1Protocol) for c in server.connections)
        writer.write(preface[7:])
        events: list[h2.events.Event] = []
        while not any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events):
            events += client.receive_data(await reader.read(65_535))
        assert [type(c) for c in server.connections] == [H2Protocol]
        writer.close()
        await writer.wait_closed()

    in_sandbox(world)(body)


def test_cleartext_port_serves_both_protocols(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.aosp_url)
        over_h2 = await client.request("GET", f"/pushes/nope?api_key={AOSP_KEY}")
        await client.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", sandbox.ports["aosp"])
        writer.write(http1_request("GET", f"/pushes/nope?api_key={AOSP_KEY}"))
        status_line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        assert over_h2.status == 404
        assert status_line == b"HTTP/1.1 404 Not Found\r\n"

    in_sandbox(world)(body)


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [(["h2", "http/1.1"], "h2"), (["http/1.1", "h2"], "h2"), (["http/1.1"], "http/1.1"), (None, None)],
)
def test_alpn_prefers_h2_and_serves_http1_to_who_asks(
    world: World, offered: list[str] | None, chosen: str | None
) -> None:
    tls = ServerTls.generate()
    with (
        SandboxThread(world.registry, tls=tls) as sandbox,
        tls_connection(sandbox.ports["aosp"], tls, offered) as sock,
    ):
        assert sock.selected_alpn_protocol() == chosen
        if chosen == "h2":
            return
        # No ALPN at all: the first bytes decide, as over cleartext.
        sock.sendall(http1_request("POST", f"/push?api_key={AOSP_KEY}", PUSH))
        with sock.makefile("rb") as reader:
            assert read_answer(reader)[0] == 200


def test_storm_and_rate_limit_with_retry_after_over_http1(world: World) -> None:
    with SandboxThread(world.registry) as sandbox, raw_connection(sandbox.ports["aosp"]) as (sock, reader):
        sandbox.aosp_faults.start_storm(Storm("RATE_LIMIT_EXCEEDED", retry_after_s=5, requests=2))
        answers = []
        for _ in range(3):
            sock.sendall(http1_request("POST", f"/push?api_key={AOSP_KEY}", PUSH))
            answers.append(read_answer(reader))
        assert [(status, headers.get("retry-after")) for status, headers, _ in answers] == [
            (429, "5"),
            (429, "5"),
            (200, None),
        ]
        assert json.loads(answers[0][2])["code"] == "RATE_LIMIT_EXCEEDED"


def test_error_rates_apply_over_http1(world: World) -> None:
    faults = FaultConfig(error_rates={"SERVICE_UNAVAILABLE": 1.0}, retry_after_s=3)
    with SandboxThread(world.registry, aosp_faults=faults) as sandbox:
        response = requests.post(f"{sandbox.aosp_url}/push?api_key={AOSP_KEY}", data=PUSH, timeout=5)
        assert (response.status_code, response.headers["Retry-After"]) == (503, "3")


def test_latency_delays_each_answer_and_holds_pipelined_ones(world: World) -> None:
    faults = FaultConfig(latency=Latency.fixed(150))
    with (
        SandboxThread(world.registry, aosp_faults=faults) as sandbox,
        raw_connection(sandbox.ports["aosp"]) as (sock, reader),
    ):
        started = time.monotonic()
        sock.sendall(http1_request("POST", f"/push?api_key={AOSP_KEY}", PUSH) * 2)
        assert [read_answer(reader)[0] for _ in range(2)] == [200, 200]
        assert time.monotonic() - started >= 0.3  # one connection answers in order: 150 ms, then 150 ms


def test_close_answers_the_request_in_flight_with_connection_close(world: World) -> None:
    async def scenario() -> None:
        sandbox = Sandbox(world.registry, aosp_faults=FaultConfig(latency=Latency.fixed(300)))
        await sandbox.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", sandbox.ports["aosp"])
        writer.write(http1_request("POST", f"/push?api_key={AOSP_KEY}", PUSH))
        connections = sandbox.servers["aosp"].connections
        while not any(isinstance(c, H1Protocol) for c in connections):
            await asyncio.sleep(0.01)  # the hand-over to HTTP/1.1 reads the request that decided it
        await sandbox.close()
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nconnection: close\r\n" in answer

    asyncio.run(scenario())


def test_requests_gets_the_aosp_push_and_push_status_answers(world: World) -> None:
    with SandboxThread(world.registry) as sandbox, requests.Session() as session:
        params = {"api_key": AOSP_KEY}
        push: dict[str, Any] = {"to": [AOSP_TOKEN, AOSP_OFFLINE, "aosp-unknown"], "data": {"wake": "1"}}
        sent = session.post(f"{sandbox.aosp_url}/push", params=params, json=push, timeout=5)
        assert sent.status_code == 200
        accepted = sent.json()
        assert accepted["success"] is True
        assert accepted["info"] == {"devices": 2, "failed": ["aosp-unknown"]}
        status = session.get(f"{sandbox.aosp_url}/pushes/{accepted['id']}", params=params, timeout=5)
        assert status.status_code == 200
        assert status.json()["push"]["pending_devices"] == [AOSP_OFFLINE]
        world.registry.come_online(AOSP_OFFLINE)
        drained = session.get(f"{sandbox.aosp_url}/pushes/{accepted['id']}", params=params, timeout=5)
        assert drained.json()["push"]["pending_devices"] == []
        refused = session.post(f"{sandbox.aosp_url}/push", params={"api_key": "wrong"}, json=push, timeout=5)
        assert (refused.status_code, refused.json()["code"]) == (401, "INVALID_API_KEY")


def test_requests_over_tls_negotiates_http1(world: World, tmp_path: Path) -> None:
    tls = ServerTls.generate()
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(tls.ca_pem)
    with SandboxThread(world.registry, tls=tls) as sandbox, requests.Session() as session:
        url = f"{sandbox.aosp_url}/push"
        sent = session.post(
            url,
            params={"api_key": AOSP_KEY},
            json={"to": AOSP_TOKEN, "data": {}},
            verify=str(ca_path),
            timeout=5,
        )
        assert sent.status_code == 200
        assert sent.raw.version == 11
