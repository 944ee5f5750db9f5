"""TLS connections of many organizations in one process: every connection of a thread reads into one shared
buffer (`workers.providers.http2._TlsLayer`), and answers still reach their own requests."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import threading

from sandbox import DeviceRegistry, FaultConfig, Latency, Sandbox
from sandbox.tls import issue_mdm_push_certificate, make_ca
from tests.integration.providers.conftest import apns_credential, apns_endpoints, apns_token
from workers.providers import http2
from workers.providers.apns import ApnsProvider
from workers.providers.base import Outcome, Push, PushType


def test_connections_of_many_certificates_share_a_read_buffer_and_get_their_own_answers() -> None:
    registry = DeviceRegistry()
    ca = make_ca("tls memory push CA", days=30)
    registry.add_apns_client_ca(ca.certificate)
    organizations = []
    for _ in range(12):
        certificate = issue_mdm_push_certificate(registry, ca=ca, days=30)
        tokens = [apns_token() for _ in range(20)]
        for token in tokens:
            registry.add_apns_device(token, topic=certificate.topic)
        organizations.append((apns_credential(certificate), tokens))
    # Answers arrive together, so reads of different connections interleave on the loop's one thread.
    faults = FaultConfig(latency=Latency.fixed(20))

    async def scenario() -> list[list[Outcome]]:
        async with Sandbox(registry, tls=True, apns_faults=faults) as sandbox:
            providers = [ApnsProvider(credential, apns_endpoints(sandbox)) for credential, _ in organizations]
            try:
                batches = [
                    [Push(f"{o:02d}{d:022d}", t, PushType.mdm, push_magic="m") for d, t in enumerate(tokens)]
                    for o, (_, tokens) in enumerate(organizations)
                ]
                results = await asyncio.gather(*(p.send(b) for p, b in zip(providers, batches, strict=True)))
                assert sum(p.connection_count for p in providers) == len(providers)
            finally:
                await asyncio.gather(*(p.close() for p in providers))
        for batch, answered in zip(batches, results, strict=True):
            assert [r.device_id for r in answered] == [push.device_id for push in batch]
        return [[r.outcome for r in answered] for answered in results]

    # Each device is known only under its own organization's topic: a mixed-up answer would not be accepted.
    assert asyncio.run(scenario()) == [[Outcome.accepted] * 20] * 12

    here = http2._thread_read_buffer()
    assert http2._thread_read_buffer() is here
    elsewhere: list[memoryview] = []
    thread = threading.Thread(target=lambda: elsewhere.append(http2._thread_read_buffer()))
    thread.start()
    thread.join()
    assert elsewhere[0] is not here
    assert len(elsewhere[0]) == len(here) == http2._TLS_READ_BYTES


def test_the_tls_layer_holds_asyncios_attributes_in_slots_and_makes_no_dict() -> None:
    # No slot hides a class attribute of asyncio's layer, which it reads before an instance sets it.
    assert not set(http2._TlsLayer.__slots__) & set(vars(asyncio.sslproto.SSLProtocol))
    registry = DeviceRegistry()
    ca = make_ca("tls layer push CA", days=30)
    registry.add_apns_client_ca(ca.certificate)
    certificate = issue_mdm_push_certificate(registry, ca=ca, days=30)
    token = apns_token()
    registry.add_apns_device(token, topic=certificate.topic)

    async def scenario() -> tuple[list[Outcome], dict[str, object]]:
        async with Sandbox(registry, tls=True) as sandbox:
            provider = ApnsProvider(apns_credential(certificate), apns_endpoints(sandbox))
            try:
                [result] = await provider.send([Push("d" * 24, token, PushType.mdm, push_magic="m")])
                [connection] = provider._pool._connections
                # The TLS layer under the transport asyncio hands the connection.
                layer = getattr(connection.transport, "_ssl_protocol", None)
                assert isinstance(layer, http2._TlsLayer)
                attributes = dict(vars(layer))
            finally:
                await provider.close()
        return [result.outcome], attributes

    outcomes, attributes = asyncio.run(scenario())
    assert outcomes == [Outcome.accepted]
    # Only what asyncio sets on a connected layer past its slots: the handshake's timing, whose class
    # defaults the slots leave visible. Its own attributes' dict (1.5 KiB) is never made.
    assert set(attributes) <= {"_handshake_start_time", "_handshake_timeout_handle"}
