"""The HTTP/2 layer: GOAWAY injection, the stream limit, latency, flow control, TLS with ALPN, shutdown."""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import urllib.request
from typing import Any

import h2.settings
import pytest

from sandbox import FaultConfig, Latency, Sandbox, SandboxThread, Storm
from sandbox.h2client import ClientResponse, ConnectionLost, H2Client, StreamRefused, _Pending
from sandbox.http2 import H2Protocol
from sandbox.testing import (
    AOSP_KEY,
    APNS_TOKEN,
    MDM_BODY,
    TOPIC,
    World,
    alert_headers,
    connect,
    in_sandbox,
    reason,
)
from sandbox.tls import ServerTls, issue_client_certificate, make_ca


async def mdm_push(client: H2Client, world: World, **headers: str) -> ClientResponse:
    return await client.request(
        "POST", f"/3/device/{APNS_TOKEN}", alert_headers(world.apns_jwt(), **headers), MDM_BODY
    )


def test_goaway_every_nth_stream_answers_up_to_it_and_refuses_the_rest(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.apns_url)
        results = await asyncio.gather(*(mdm_push(client, world) for _ in range(5)), return_exceptions=True)
        answered = [r for r in results if isinstance(r, ClientResponse)]
        refused = [r for r in results if isinstance(r, StreamRefused)]
        assert [r.status for r in answered] == [200, 200, 200]
        assert len(refused) == 2
        assert client.protocol.goaway_last_stream == 5  # the third client stream
        await asyncio.wait_for(client.protocol.closed.wait(), 5)
        fresh = await connect(sandbox.apns_url)
        assert (await mdm_push(fresh, world)).status == 200
        await fresh.close()

    in_sandbox(world, apns_faults=FaultConfig(goaway_every_n_streams=3))(body)


def test_max_concurrent_streams_is_advertised_and_enforced(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.apns_url)
        assert client.protocol.remote_max_streams == 2
        # A client that respects the limit gets every answer, even with more requests than streams.
        results = await asyncio.gather(*(mdm_push(client, world) for _ in range(6)))
        assert [r.status for r in results] == [200] * 6
        # One that ignores it loses the connection (the emulator treats it as a protocol error).
        conn = client.protocol.conn
        conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100})
        conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 100
        conn.remote_settings.acknowledge()
        headers = alert_headers(world.apns_jwt())
        flood = [client._request("POST", f"/3/device/{APNS_TOKEN}", headers, MDM_BODY)]
        flood += [client._request("POST", f"/3/device/{APNS_TOKEN}", headers, MDM_BODY)]
        flood += [client._request("POST", f"/3/device/{APNS_TOKEN}", headers, MDM_BODY)]
        outcomes = await asyncio.gather(*flood, return_exceptions=True)
        assert any(isinstance(o, StreamRefused | ConnectionLost) for o in outcomes)
        await client.close()

    in_sandbox(world, apns_faults=FaultConfig(max_concurrent_streams=2, latency=Latency.fixed(20)))(body)


def test_latency_delays_each_stream_without_serialising_them(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    held: dict[int, float] = {}  # stream id -> when the emulator began to hold its answer (loop time)
    answered: dict[int, float] = {}
    hold, respond = H2Protocol._answer_later, H2Protocol._respond

    def recorded_hold(self: H2Protocol, stream_id: int, response: Any, delay_s: float) -> None:
        held[stream_id] = self.loop.time()
        hold(self, stream_id, response, delay_s)

    def recorded_respond(self: H2Protocol, stream_id: int, response: Any) -> None:
        answered[stream_id] = self.loop.time()
        respond(self, stream_id, response)

    monkeypatch.setattr(H2Protocol, "_answer_later", recorded_hold)
    monkeypatch.setattr(H2Protocol, "_respond", recorded_respond)

    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.apns_url)
        results = await asyncio.gather(*(mdm_push(client, world) for _ in range(50)))
        await client.close()
        assert [r.status for r in results] == [200] * 50

    in_sandbox(world, apns_faults=FaultConfig(latency=Latency.fixed(200)))(body)
    assert len(held) == 50
    assert answered.keys() == held.keys()
    assert all(answered[i] - held[i] >= 0.2 - 1e-6 for i in held), "each answer is held its 200 ms"
    # Serialised, each hold would begin once the one before it was answered; here they overlap.
    first_answer = min(answered.values())
    held_together = sum(1 for start in held.values() if start < first_answer)
    assert held_together > 1, "the second answer was held only after the first was sent"


def test_storm_can_be_switched_on_and_off_while_running(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.apns_url)
        assert (await mdm_push(client, world)).status == 200
        sandbox.apns_faults.start_storm(Storm("ServiceUnavailable", retry_after_s=7))
        stormy = await mdm_push(client, world)
        assert (stormy.status, reason(stormy), stormy.headers["retry-after"]) == (
            503,
            "ServiceUnavailable",
            "7",
        )
        sandbox.apns_faults.stop_storm()
        assert (await mdm_push(client, world)).status == 200
        sandbox.apns_faults.start_storm(Storm("TooManyRequests", requests=2))
        statuses = [(await mdm_push(client, world)).status for _ in range(3)]
        assert statuses == [429, 429, 200]
        await client.close()

    in_sandbox(world)(body)


def test_large_response_respects_a_small_client_window(world: World) -> None:
    tokens = [f"aospbulk{i:016d}" for i in range(900)]
    for token in tokens:
        world.registry.add_aosp_device(token, online=False)

    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.aosp_url)
        headers = [("content-type", "application/json")]
        push = json.dumps({"to": tokens, "data": {"x": "y"}}).encode()  # ~25 kB up, with the default window
        sent = await client.request("POST", f"/push?api_key={AOSP_KEY}", headers, push)
        push_id = json.loads(sent.body)["id"]
        conn = client.protocol.conn
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1024})
        client.protocol.flush()
        response = await client.request("GET", f"/pushes/{push_id}?api_key={AOSP_KEY}")
        await client.close()
        assert len(response.body) > 20_000
        assert len(json.loads(response.body)["push"]["pending_devices"]) == 900

    in_sandbox(world)(body)


def test_tls_with_alpn_h2_and_client_certificate_auth(world: World) -> None:
    client_ca = make_ca("APNs client CA")
    certificate = issue_client_certificate(client_ca, TOPIC)
    unknown = issue_client_certificate(client_ca, TOPIC)
    world.registry.add_apns_client_ca(client_ca.certificate)
    world.registry.add_apns_client_certificate(certificate.certificate, topics=[TOPIC])
    tls = ServerTls.generate()

    async def body(sandbox: Sandbox) -> None:
        assert sandbox.apns_url.startswith("https://")
        port = sandbox.ports["apns"]
        context = tls.client_context(certificate)
        client = await H2Client.connect("127.0.0.1", port, ssl_context=context, server_hostname="localhost")
        ssl_object = (
            client.protocol.transport.get_extra_info("ssl_object") if client.protocol.transport else None
        )
        assert ssl_object is not None
        assert ssl_object.selected_alpn_protocol() == "h2"
        headers = [("apns-push-type", "mdm")]  # no topic: the certificate's only topic is used
        response = await client.request("POST", f"/3/device/{APNS_TOKEN}", headers, MDM_BODY)
        assert response.status == 200
        await client.close()
        stranger = await H2Client.connect(
            "127.0.0.1", port, ssl_context=tls.client_context(unknown), server_hostname="localhost"
        )
        refused = await stranger.request("POST", f"/3/device/{APNS_TOKEN}", headers, MDM_BODY)
        await stranger.close()
        assert (refused.status, reason(refused)) == (403, "BadCertificate")
        anonymous = await H2Client.connect(
            "127.0.0.1", port, ssl_context=tls.client_context(), server_hostname="localhost"
        )
        missing = await anonymous.request("POST", f"/3/device/{APNS_TOKEN}", headers, MDM_BODY)
        await anonymous.close()
        assert (missing.status, reason(missing)) == (403, "MissingProviderToken")

    in_sandbox(world, tls=tls)(body)


def test_http1_client_is_turned_away_by_apns(world: World) -> None:
    # APNs is HTTP/2 only (FCM and AOSP serve HTTP/1.1 too: test_sandbox_http1).
    with SandboxThread(world.registry) as sandbox, pytest.raises(http.client.HTTPException):
        urllib.request.urlopen(f"{sandbox.apns_url}/3/device/{APNS_TOKEN}", timeout=5)


def test_close_answers_in_flight_requests_before_closing(world: World) -> None:
    async def scenario() -> None:
        sandbox = Sandbox(world.registry, apns_faults=FaultConfig(latency=Latency.fixed(300)))
        await sandbox.start()
        client = await connect(sandbox.apns_url)
        in_flight = asyncio.ensure_future(mdm_push(client, world))
        connections = sandbox.servers["apns"].connections
        while not any(isinstance(c, H2Protocol) and c.streams for c in connections):
            await asyncio.sleep(0)  # wait until the server has the stream, not to paper over a race
        await sandbox.close()
        response = await in_flight
        assert response.status == 200
        assert client.protocol.goaway_last_stream == 1
        await asyncio.wait_for(client.protocol.closed.wait(), 5)

    asyncio.run(scenario())


def test_sandbox_thread_serves_sync_callers(world: World) -> None:
    with SandboxThread(world.registry) as sandbox:
        assert sandbox.apns_url.startswith("http://127.0.0.1:")
        assert len({sandbox.ports["apns"], sandbox.ports["fcm"], sandbox.ports["aosp"]}) == 3

        async def one_push() -> int:
            client = await connect(sandbox.apns_url)
            response = await mdm_push(client, world)
            await client.close()
            return response.status

        assert asyncio.run(one_push()) == 200


def test_tls_rejects_a_client_that_does_not_trust_it(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        context = ssl.create_default_context()
        context.set_alpn_protocols(["h2"])
        with pytest.raises(ssl.SSLCertVerificationError):
            await H2Client.connect(
                "127.0.0.1", sandbox.ports["fcm"], ssl_context=context, server_hostname="localhost"
            )

    in_sandbox(world, tls=True)(body)


def test_a_malformed_request_is_reset_and_the_connection_goes_on(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.apns_url)
        conn = client.protocol.conn
        conn.config.validate_outbound_headers = False  # to send what h2 would refuse to
        conn.config.normalize_outbound_headers = False
        stream_id = conn.get_next_available_stream_id()
        future: asyncio.Future[ClientResponse] = asyncio.get_running_loop().create_future()
        client.protocol.pending[stream_id] = _Pending(future)
        request = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "x"),
            (":path", f"/3/device/{APNS_TOKEN}"),
        ]
        conn.send_headers(stream_id, [*request, ("Apns-Topic", TOPIC)], end_stream=True)
        client.protocol.flush()
        with pytest.raises(StreamRefused, match="PROTOCOL_ERROR"):
            await future
        assert (await mdm_push(client, world)).status == 200
        await client.close()

    in_sandbox(world)(body)
