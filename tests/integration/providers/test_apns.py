"""mdmq's APNs client against the APNs emulator: every outcome class, token refresh, GOAWAY, limits, TLS."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime

import pytest

from sandbox import DeviceRegistry, FaultConfig, Latency, Sandbox, Storm
from sandbox.tls import issue_client_certificate, make_ca
from tests.integration.providers.conftest import TOPIC, Clock, apns_token
from workers.providers.apns import ApnsProvider
from workers.providers.base import ConnectionFailed, CredentialRejected, Outcome, Push, PushType
from workers.providers.credentials import ApnsCertificate, ApnsEnvironment, ApnsTokenKey
from workers.providers.endpoints import ProviderEndpoints


def endpoints_for(sandbox: Sandbox) -> ProviderEndpoints:
    ca = sandbox.tls.ca_pem.decode() if sandbox.tls else None
    return ProviderEndpoints(apns_production=sandbox.apns_url, apns_sandbox=sandbox.apns_url, ca_pem=ca)


def wake_up(device_id: str, token: str) -> Push:
    return Push(device_id, token=token, push_type=PushType.mdm, push_magic="magic-" + device_id)


def devices(registry: DeviceRegistry, count: int) -> list[Push]:
    pushes = []
    for index in range(count):
        token = apns_token()
        registry.add_apns_device(token, topic=TOPIC)
        pushes.append(wake_up(f"{index:024x}", token))
    return pushes


def test_every_outcome_class(registry: DeviceRegistry, apns_key: ApnsTokenKey) -> None:
    live, gone, other_topic, unknown = apns_token(), apns_token(), apns_token(), apns_token()
    registry.add_apns_device(live, topic=TOPIC)
    registry.add_apns_device(gone, topic=TOPIC)
    registry.unregister(gone, at=1_700_000_000.5)
    registry.add_apns_device(other_topic, topic="com.example.other")
    too_large = Push("d5", token=live, push_type=PushType.alert, payload={"aps": {"alert": "x" * 5000}})

    async def scenario() -> None:
        async with Sandbox(registry) as sandbox:
            provider = ApnsProvider(apns_key, endpoints_for(sandbox))
            pushes = [
                wake_up("d1", live),
                wake_up("d2", gone),
                wake_up("d3", other_topic),
                wake_up("d4", unknown),
                too_large,
            ]
            results = await provider.send(pushes)
            await provider.close()
        assert [r.device_id for r in results] == ["d1", "d2", "d3", "d4", "d5"]
        accepted, unregistered, not_for_topic, bad_token, rejected = results
        assert (accepted.outcome, accepted.status) == (Outcome.accepted, 200)
        assert accepted.push_id
        assert accepted.expires_at is not None
        assert accepted.sent_at is not None
        assert (unregistered.outcome, unregistered.status, unregistered.reason) == (
            Outcome.permanent,
            410,
            "Unregistered",
        )
        assert unregistered.token_invalid_since == datetime.fromtimestamp(1_700_000_000.5, UTC)
        assert (not_for_topic.outcome, not_for_topic.reason) == (Outcome.permanent, "DeviceTokenNotForTopic")
        assert (bad_token.outcome, bad_token.status, bad_token.reason) == (
            Outcome.permanent,
            400,
            "BadDeviceToken",
        )
        # Refused before sending: nothing reached the emulator for it.
        assert (rejected.outcome, rejected.status, rejected.reason) == (
            Outcome.payload_rejected,
            None,
            "PayloadTooLarge",
        )

    asyncio.run(scenario())


def test_bad_topic_is_payload_rejected_and_revoked_key_is_credential(
    registry: DeviceRegistry, apns_key: ApnsTokenKey
) -> None:
    (push,) = devices(registry, 1)
    bad_topic = ApnsTokenKey(apns_key.private_key_pem, apns_key.key_id, apns_key.team_id, "bad topic!")

    async def scenario() -> None:
        async with Sandbox(registry) as sandbox:
            provider = ApnsProvider(bad_topic, endpoints_for(sandbox))
            (topic_result,) = await provider.send([push])
            await provider.close()
            registry.revoke_apns_key(apns_key.key_id)
            provider = ApnsProvider(apns_key, endpoints_for(sandbox))
            (revoked_result,) = await provider.send([push])
            await provider.close()
        assert (topic_result.outcome, topic_result.reason) == (Outcome.payload_rejected, "BadTopic")
        assert (revoked_result.outcome, revoked_result.status, revoked_result.reason) == (
            Outcome.credential,
            403,
            "InvalidProviderToken",
        )

    asyncio.run(scenario())


def test_429_and_5xx_are_transient_with_retry_after(registry: DeviceRegistry, apns_key: ApnsTokenKey) -> None:
    pushes = devices(registry, 20)

    async def scenario() -> None:
        async with Sandbox(registry) as sandbox:
            provider = ApnsProvider(apns_key, endpoints_for(sandbox))
            sandbox.apns_faults.start_storm(Storm("TooManyRequests", retry_after_s=7, requests=10))
            throttled = await provider.send(pushes[:10])
            sandbox.apns_faults.start_storm(Storm("ServiceUnavailable", retry_after_s=3, requests=10))
            unavailable = await provider.send(pushes[10:])
            after_storm = await provider.send(pushes[:5])
            await provider.close()
        assert {(r.outcome, r.status, r.reason, r.retry_after_s) for r in throttled} == {
            (Outcome.transient, 429, "TooManyRequests", 7.0)
        }
        assert {(r.outcome, r.status, r.reason, r.retry_after_s) for r in unavailable} == {
            (Outcome.transient, 503, "ServiceUnavailable", 3.0)
        }
        assert {r.outcome for r in after_storm} == {Outcome.accepted}

    asyncio.run(scenario())


def test_provider_token_is_reused_then_refreshed_once_when_expired(apns_key: ApnsTokenKey) -> None:
    start = 1_800_000_000.0
    client_clock, emulator_clock = Clock(start), Clock(start)
    registry = DeviceRegistry(clock=emulator_clock)
    _register_key(registry, apns_key)
    pushes = devices(registry, 60)

    async def scenario() -> None:
        async with Sandbox(registry) as sandbox:
            provider = ApnsProvider(apns_key, endpoints_for(sandbox), clock=client_clock)
            first = await provider.send(pushes[:20])
            client_clock.now = start + 25 * 60  # still within the 40 minutes the client reuses a token
            emulator_clock.now = start + 61 * 60  # but APNs (its clock ahead) calls it expired
            refreshed = await provider.send(pushes[20:40])
            tokens_after_refresh = provider.token_generation
            client_clock.now = start + 35 * 60  # the new token is 10 minutes old: too young to replace
            emulator_clock.now = start + 122 * 60
            held = await provider.send(pushes[40:])
            await provider.close()
        assert {r.outcome for r in first} == {Outcome.accepted}
        # All 20 were rejected with the same token; one refresh served every resend.
        assert {r.outcome for r in refreshed} == {Outcome.accepted}
        assert tokens_after_refresh == 2
        assert {(r.outcome, r.reason) for r in held} == {(Outcome.credential, "ExpiredProviderToken")}
        assert provider.token_generation == 2

    asyncio.run(scenario())


def test_goaway_mid_batch_loses_nothing(registry: DeviceRegistry, apns_key: ApnsTokenKey) -> None:
    pushes = devices(registry, 1500)
    faults = FaultConfig(goaway_every_n_streams=100, latency=Latency.fixed(5))

    async def scenario() -> None:
        async with Sandbox(registry, apns_faults=faults) as sandbox:
            provider = ApnsProvider(apns_key, endpoints_for(sandbox))
            results = await provider.send(pushes)
            delivered = {r.device_id for r in results if r.outcome is Outcome.accepted}
            for _ in range(50):  # what dispatch does with transient results, without the backoff
                again = [p for p in pushes if p.device_id not in delivered]
                if not again:
                    break
                delivered |= {
                    r.device_id for r in await provider.send(again) if r.outcome is Outcome.accepted
                }
            await provider.close()
        assert [r.device_id for r in results] == [p.device_id for p in pushes]
        assert {r.outcome for r in results} <= {Outcome.accepted, Outcome.transient}
        transient = [r for r in results if r.outcome is Outcome.transient]
        assert transient, "the emulator's GOAWAYs should have cut some streams"
        assert all(r.reason and r.reason.startswith("Unanswered") for r in transient)
        assert delivered == {p.device_id for p in pushes}  # replaced connections took every resend

    asyncio.run(scenario())


def test_server_stream_limit_is_respected(registry: DeviceRegistry, apns_key: ApnsTokenKey) -> None:
    # The emulator treats a client that exceeds SETTINGS_MAX_CONCURRENT_STREAMS as a protocol error.
    pushes = devices(registry, 300)

    async def scenario() -> None:
        faults = FaultConfig(max_concurrent_streams=8)
        async with Sandbox(registry, apns_faults=faults) as sandbox:
            provider = ApnsProvider(apns_key, endpoints_for(sandbox), max_connections=2)
            results = await provider.send(pushes)
            connections = provider.connection_count
            await provider.close()
        assert {r.outcome for r in results} == {Outcome.accepted}
        assert connections == 2  # more concurrency than one connection allows: a second one was opened

    asyncio.run(scenario())


def test_a_push_without_answer_times_out_as_transient(
    registry: DeviceRegistry, apns_key: ApnsTokenKey
) -> None:
    pushes = devices(registry, 3)

    async def scenario() -> None:
        async with Sandbox(registry, apns_faults=FaultConfig(latency=Latency.fixed(10_000))) as sandbox:
            provider = ApnsProvider(apns_key, endpoints_for(sandbox), request_timeout_s=0.2)
            results = await provider.send(pushes)
            await provider.close()
        assert {(r.outcome, r.reason) for r in results} == {
            (Outcome.transient, "Unanswered: no answer within 0.2 s")
        }

    asyncio.run(scenario())


def test_no_server_raises_connection_failed(apns_key: ApnsTokenKey) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free now, and nobody listens on it

    async def scenario() -> None:
        endpoints = ProviderEndpoints(apns_sandbox=f"http://127.0.0.1:{port}")
        provider = ApnsProvider(apns_key, endpoints)
        with pytest.raises(ConnectionFailed):
            await provider.send([wake_up("d1", apns_token())])
        await provider.close()

    asyncio.run(scenario())


def test_certificate_auth_over_tls(registry: DeviceRegistry) -> None:
    ca = make_ca("APNs test CA")
    issued = issue_client_certificate(ca, TOPIC)
    registry.add_apns_client_ca(ca.certificate)
    registry.add_apns_client_certificate(issued.certificate, topics=[TOPIC])
    credential = ApnsCertificate.from_pem(
        issued.cert_pem.decode(), issued.key_pem.decode(), environment=ApnsEnvironment.sandbox
    )
    (push,) = devices(registry, 1)

    async def scenario() -> None:
        async with Sandbox(registry, tls=True) as sandbox:
            provider = ApnsProvider(credential, endpoints_for(sandbox))
            results = await provider.send([push])
            await provider.close()
        assert credential.topic == TOPIC  # read from the certificate's subject UID
        assert [(r.outcome, r.status) for r in results] == [(Outcome.accepted, 200)]

    asyncio.run(scenario())


def test_expired_certificate_is_refused_before_sending(registry: DeviceRegistry) -> None:
    ca = make_ca("APNs test CA")
    issued = issue_client_certificate(ca, TOPIC, not_before=datetime(2020, 1, 1, tzinfo=UTC), days=30)
    credential = ApnsCertificate.from_pem(issued.cert_pem.decode(), issued.key_pem.decode())
    assert credential.not_after == datetime(2020, 1, 31, tzinfo=UTC)

    async def scenario() -> None:
        provider = ApnsProvider(credential, ProviderEndpoints(apns_production="https://127.0.0.1:9"))
        with pytest.raises(CredentialRejected):
            await provider.send([wake_up("d1", apns_token())])
        await provider.close()

    asyncio.run(scenario())


def _register_key(registry: DeviceRegistry, key: ApnsTokenKey) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = serialization.load_pem_private_key(key.private_key_pem.encode(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    registry.add_apns_key(team_id=key.team_id, key_id=key.key_id, public_key=private.public_key())
