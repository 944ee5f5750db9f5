"""mdmq's APNs client against the APNs emulator over TLS with the MDM push certificate: every outcome class
and its advice, GOAWAY, limits, timeouts, expired certificates.

Sources (providers.md): [A-RESP] "Handling notification responses from APNs", [A-SEND] "Sending notification
requests to APNs", [A-MDMPUSH] "Setting up push notifications for your device management customers". Each
APNs rule on its own, with the raw answer beside mdmq's reading: tests/integration/fidelity/test_apns.py.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime

import pytest

from sandbox import DeviceRegistry, FaultConfig, Latency, Sandbox, Storm
from sandbox.tls import MdmPushCertificate, issue_client_certificate, issue_mdm_push_certificate, make_ca
from tests.integration.providers.conftest import TOPIC, apns_credential, apns_endpoints, apns_token
from workers.providers.apns import ApnsProvider
from workers.providers.base import (
    HOLDING,
    ConnectionFailed,
    CredentialRejected,
    Outcome,
    Push,
    PushResult,
    PushType,
)
from workers.providers.credentials import ApnsCertificate, ApnsEnvironment
from workers.providers.endpoints import ProviderEndpoints


def wake_up(device_id: str, token: str) -> Push:
    return Push(device_id, token=token, push_type=PushType.mdm, push_magic="magic-" + device_id)


def devices(registry: DeviceRegistry, count: int, *, environment: str = "production") -> list[Push]:
    pushes = []
    for index in range(count):
        token = apns_token()
        registry.add_apns_device(token, topic=TOPIC, environment=environment)
        pushes.append(wake_up(f"{index:024x}", token))
    return pushes


def send(registry: DeviceRegistry, credential: ApnsCertificate, pushes: list[Push]) -> list[PushResult]:
    """`pushes` sent once through a fresh provider to a TLS sandbox of `registry`."""

    async def scenario() -> list[PushResult]:
        async with Sandbox(registry, tls=True) as sandbox:
            provider = ApnsProvider(credential, apns_endpoints(sandbox))
            try:
                return await provider.send(pushes)
            finally:
                await provider.close()

    return asyncio.run(scenario())


def test_every_outcome_class(registry: DeviceRegistry, apns_cert: ApnsCertificate) -> None:
    live, gone, other_topic, unknown = apns_token(), apns_token(), apns_token(), apns_token()
    registry.add_apns_device(live, topic=TOPIC)
    registry.add_apns_device(gone, topic=TOPIC)
    registry.unregister(gone, at=1_700_000_000.5)
    registry.add_apns_device(other_topic, topic="com.apple.mgmt.External.other")
    too_large = Push("d5", token=live, push_type=PushType.alert, payload={"aps": {"alert": "x" * 5000}})
    pushes = [wake_up("d1", live), wake_up("d2", gone), wake_up("d3", other_topic), wake_up("d4", unknown)]

    results = send(registry, apns_cert, [*pushes, too_large])

    assert [r.device_id for r in results] == ["d1", "d2", "d3", "d4", "d5"]
    accepted, unregistered, not_for_topic, bad_token, rejected = results
    assert (accepted.outcome, accepted.status) == (Outcome.accepted, 200)
    assert None not in (accepted.push_id, accepted.expires_at, accepted.sent_at)
    assert accepted.advice is None
    # [A-RESP] 410: the device's for sure; the timestamp says since when.
    assert (unregistered.outcome, unregistered.status, unregistered.reason) == (
        Outcome.permanent,
        410,
        "Unregistered",
    )
    assert unregistered.token_invalid_since == datetime.fromtimestamp(1_700_000_000.5, UTC)
    # [A-RESP] ambiguous: one token's, or the credential's when every token says it; the fix travels along.
    assert (not_for_topic.outcome, not_for_topic.reason) == (Outcome.dead_token, "DeviceTokenNotForTopic")
    assert "renewed certificate" in (not_for_topic.advice or "")
    assert (bad_token.outcome, bad_token.status, bad_token.reason) == (
        Outcome.dead_token,
        400,
        "BadDeviceToken",
    )
    assert "environment" in (bad_token.advice or "")
    # Refused before sending [A-SEND] 4096 bytes: nothing reached the emulator for it.
    assert (rejected.outcome, rejected.status, rejected.reason) == (
        Outcome.payload_rejected,
        None,
        "PayloadTooLarge",
    )


def test_a_new_certificate_with_a_new_topic_makes_every_token_not_for_topic(
    registry: DeviceRegistry,
) -> None:
    """The incident of issue 20: a replaced (not renewed) certificate has a new topic; APNs answers
    DeviceTokenNotForTopic for every device [A-RESP]. Never `permanent`: the dispatch judges, and holds."""
    pushes = devices(registry, 5)
    replaced = apns_credential(issue_mdm_push_certificate(registry))  # a fresh topic

    results = send(registry, replaced, pushes)

    assert {(r.outcome, r.status, r.reason) for r in results} == {
        (Outcome.dead_token, 400, "DeviceTokenNotForTopic")
    }
    assert all(r.advice and "same Apple ID" in r.advice for r in results)


def test_a_certificate_stored_for_the_other_environment_makes_every_token_bad(
    registry: DeviceRegistry, push_certificate: MdmPushCertificate
) -> None:
    """Stored as sandbox while the devices' tokens are production: APNs development answers BadDeviceToken
    for each [A-RESP] ("...and that the token matches the environment")."""
    pushes = devices(registry, 5)
    results = send(registry, apns_credential(push_certificate, ApnsEnvironment.sandbox), pushes)
    assert {(r.outcome, r.reason) for r in results} == {(Outcome.dead_token, "BadDeviceToken")}
    assert all(r.advice and "environment" in r.advice for r in results)


def test_a_certificate_apns_knows_only_in_the_other_environment_is_config(registry: DeviceRegistry) -> None:
    # [A-RESP] 403 BadCertificateEnvironment: the organization's configuration, the certificate stays valid.
    production_only = issue_mdm_push_certificate(registry, topic=TOPIC, environments=["production"])
    pushes = devices(registry, 3, environment="development")
    results = send(registry, apns_credential(production_only, ApnsEnvironment.sandbox), pushes)
    assert {(r.outcome, r.status, r.reason) for r in results} == {
        (Outcome.config, 403, "BadCertificateEnvironment")
    }
    assert all(r.outcome in HOLDING and r.advice for r in results)


def test_a_certificate_not_allowed_the_topic_is_config(registry: DeviceRegistry) -> None:
    # [A-RESP] 400 TopicDisallowed: a certificate APNs lets push to other topics only.
    ca = make_ca("APNs test CA")
    issued = issue_client_certificate(ca, TOPIC)
    registry.add_apns_client_ca(ca.certificate)
    registry.add_apns_client_certificate(issued.certificate, topics=["com.example.app"])
    credential = ApnsCertificate.from_pem(issued.cert_pem.decode(), issued.key_pem.decode())
    results = send(registry, credential, devices(registry, 2))
    assert {(r.outcome, r.status, r.reason) for r in results} == {(Outcome.config, 400, "TopicDisallowed")}
    assert all(r.advice and "com.apple.mgmt." in r.advice for r in results)


def test_a_revoked_certificate_is_the_credentials(
    registry: DeviceRegistry, push_certificate: MdmPushCertificate, apns_cert: ApnsCertificate
) -> None:
    # [A-RESP] 403 BadCertificate.
    registry.revoke_apns_client_certificate(push_certificate.issued.certificate)
    results = send(registry, apns_cert, devices(registry, 2))
    assert {(r.outcome, r.status, r.reason) for r in results} == {(Outcome.credential, 403, "BadCertificate")}
    assert all(r.advice for r in results)


def test_429_and_5xx_are_transient_and_any_retry_after_is_kept(
    registry: DeviceRegistry, apns_cert: ApnsCertificate
) -> None:
    # [A-RESP] TooManyRequests: that device, later; 5xx: retry after a delay. APNs documents no Retry-After;
    # one sent by something in front of it (the emulator's injected storm) is still read.
    pushes = devices(registry, 20)

    async def scenario() -> None:
        async with Sandbox(registry, tls=True) as sandbox:
            provider = ApnsProvider(apns_cert, apns_endpoints(sandbox))
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


def test_goaway_mid_batch_loses_nothing(registry: DeviceRegistry, apns_cert: ApnsCertificate) -> None:
    pushes = devices(registry, 1500)
    faults = FaultConfig(goaway_every_n_streams=100, latency=Latency.fixed(5))

    async def scenario() -> None:
        async with Sandbox(registry, tls=True, apns_faults=faults) as sandbox:
            provider = ApnsProvider(apns_cert, apns_endpoints(sandbox))
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


def test_server_stream_limit_is_respected(registry: DeviceRegistry, apns_cert: ApnsCertificate) -> None:
    # The emulator treats a client that exceeds SETTINGS_MAX_CONCURRENT_STREAMS as a protocol error.
    pushes = devices(registry, 300)

    async def scenario() -> None:
        faults = FaultConfig(max_concurrent_streams=8)
        async with Sandbox(registry, tls=True, apns_faults=faults) as sandbox:
            provider = ApnsProvider(apns_cert, apns_endpoints(sandbox), max_connections=2)
            results = await provider.send(pushes)
            connections = provider.connection_count
            await provider.close()
        assert {r.outcome for r in results} == {Outcome.accepted}
        assert connections == 2  # more concurrency than one connection allows: a second one was opened

    asyncio.run(scenario())


def test_a_push_without_answer_times_out_as_transient(
    registry: DeviceRegistry, apns_cert: ApnsCertificate
) -> None:
    pushes = devices(registry, 3)

    async def scenario() -> None:
        faults = FaultConfig(latency=Latency.fixed(10_000))
        async with Sandbox(registry, tls=True, apns_faults=faults) as sandbox:
            provider = ApnsProvider(apns_cert, apns_endpoints(sandbox), request_timeout_s=0.2)
            results = await provider.send(pushes)
            await provider.close()
        assert {(r.outcome, r.reason) for r in results} == {
            (Outcome.transient, "Unanswered: no answer within 0.2 s")
        }

    asyncio.run(scenario())


def test_no_server_raises_connection_failed(apns_cert: ApnsCertificate) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free now, and nobody listens on it

    async def scenario() -> None:
        endpoints = ProviderEndpoints(apns_production=f"http://127.0.0.1:{port}")
        provider = ApnsProvider(apns_cert, endpoints)
        with pytest.raises(ConnectionFailed):
            await provider.send([wake_up("d1", apns_token())])
        await provider.close()

    asyncio.run(scenario())


def test_the_topic_is_the_certificates_subject_uid(
    registry: DeviceRegistry, apns_cert: ApnsCertificate
) -> None:
    # [A-MDMPUSH] one certificate per customer, its topic the subject's UID.
    assert apns_cert.topic == TOPIC
    assert [(r.outcome, r.status) for r in send(registry, apns_cert, devices(registry, 1))] == [
        (Outcome.accepted, 200)
    ]


def test_expired_certificate_is_refused_before_sending() -> None:
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
