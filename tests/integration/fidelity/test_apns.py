"""APNs fidelity: each rule of Apple's documents, the sandbox's raw answer to it and mdmq's reading of it.

Sources (providers.md): [A-RESP] "Handling notification responses from APNs", [A-SEND] "Sending notification
requests to APNs", [A-JWT] "Establishing a token-based connection to APNs", [A-MDMPUSH] "Setting up push
notifications for your device management customers". mdmq's `ApnsProvider` sends every push here, over TLS
with the organization's MDM push certificate (subject UID = topic) as mdmq does in production; requests
mdmq never makes (a JWT, another topic, no certificate) go through the sandbox's raw HTTP/2 client.
`PushResult.status` and `.reason` are the raw answer off the wire; `.outcome` and `.advice` mdmq's reading.
"""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sandbox import DeviceRegistry, FaultConfig, Sandbox
from sandbox.h2client import ClientResponse
from sandbox.testing import MDM_BODY, connect_with_certificate, mdm_headers, reason
from sandbox.tls import Issued, MdmPushCertificate, issue_mdm_push_certificate
from tests.integration.fidelity.expected import Expected, check, send_once
from tests.integration.providers.conftest import TOPIC, apns_credential, apns_endpoints, apns_token
from workers.providers.apns import ApnsProvider
from workers.providers.apns_reasons import answer_for
from workers.providers.base import Outcome, Push, PushResult, PushType
from workers.providers.credentials import ApnsCertificate, ApnsEnvironment

NOT_HEX = "zz" + "ab" * 31


@pytest.fixture
def registry() -> DeviceRegistry:
    return DeviceRegistry()


@pytest.fixture
def push_certificate(registry: DeviceRegistry) -> MdmPushCertificate:
    """The organization's MDM push certificate, known to APNs in both environments."""
    return issue_mdm_push_certificate(registry, topic=TOPIC)


@pytest.fixture
def apns_cert(push_certificate: MdmPushCertificate) -> ApnsCertificate:
    return apns_credential(push_certificate)


def wake_up(token: str) -> Push:
    return Push("d1", token=token, push_type=PushType.mdm, push_magic="00000000-1111-2222-3333-444444444444")


def device(registry: DeviceRegistry, *, topic: str = TOPIC, environment: str = "production") -> str:
    token = apns_token()
    registry.add_apns_device(token, topic=topic, environment=environment)
    return token


def send(
    registry: DeviceRegistry, credential: ApnsCertificate, push: Push, faults: FaultConfig | None = None
) -> PushResult:
    """One push through mdmq's client to a TLS sandbox of `registry`."""

    async def scenario() -> PushResult:
        async with Sandbox(registry, tls=True, apns_faults=faults) as sandbox:
            return await send_once(ApnsProvider(credential, apns_endpoints(sandbox)), push)

    return asyncio.run(scenario())


def raw(
    registry: DeviceRegistry,
    certificate: Issued | None,
    token: str,
    headers: list[tuple[str, str]],
    body: bytes = MDM_BODY,
) -> ClientResponse:
    """One raw HTTP/2 request over TLS (presenting `certificate`, if any) to the production listener."""

    async def scenario() -> ClientResponse:
        async with Sandbox(registry, tls=True) as sandbox:
            assert sandbox.tls is not None
            client = await connect_with_certificate(sandbox.apns_url, sandbox.tls, certificate)
            try:
                return await client.request("POST", f"/3/device/{token}", headers, body)
            finally:
                await client.close()

    return asyncio.run(scenario())


# -- tokens --------------------------------------------------------------------------------------------------


def test_a_live_token_is_accepted(registry: DeviceRegistry, apns_cert: ApnsCertificate) -> None:
    """[A-RESP] [A-SEND] 200, empty body, apns-id echoed: accepted, not delivered."""
    result = send(registry, apns_cert, wake_up(device(registry)))
    assert (result.status, result.reason, result.outcome, result.advice) == (
        200,
        None,
        Outcome.accepted,
        None,
    )
    assert result.push_id


@pytest.mark.parametrize("token", ["abc", "0" * 63, "ab" * 100], ids=["3", "63", "200"])
def test_any_length_of_hex_is_a_token(
    registry: DeviceRegistry, apns_cert: ApnsCertificate, token: str
) -> None:
    """[A-SEND] "don't hard-code the size of device tokens": odd, short and long hex tokens are tokens."""
    registry.add_apns_device(token, topic=TOPIC)
    assert send(registry, apns_cert, wake_up(token)).outcome is Outcome.accepted


def test_a_token_that_is_not_hex_is_a_bad_device_token(
    registry: DeviceRegistry, apns_cert: ApnsCertificate
) -> None:
    """[A-RESP] 400 BadDeviceToken: "the specified device token is invalid"; [A-SEND] tokens are hex."""
    result = send(registry, apns_cert, wake_up(NOT_HEX))
    check(result, Expected(400, "BadDeviceToken", Outcome.dead_token, "environment"))


def test_an_unknown_token_is_a_bad_device_token(registry: DeviceRegistry, apns_cert: ApnsCertificate) -> None:
    """[A-RESP] 400 BadDeviceToken; ambiguous (dead_token): the dispatch decides whose it is."""
    check(
        send(registry, apns_cert, wake_up(apns_token())), Expected(400, "BadDeviceToken", Outcome.dead_token)
    )


def test_a_token_of_the_other_environment_is_a_bad_device_token(
    registry: DeviceRegistry, apns_cert: ApnsCertificate
) -> None:
    """[A-RESP] BadDeviceToken: "verify ... that the token matches the environment"; [A-SEND] a token works
    only in its environment. The advice names the environment: a whole fleet answering this is a
    certificate stored for the wrong one."""
    token = device(registry, environment="development")
    result = send(registry, apns_cert, wake_up(token))  # stored as production: the production listener
    check(result, Expected(400, "BadDeviceToken", Outcome.dead_token, "environment"))


def test_a_token_of_another_topic_is_not_for_the_topic(
    registry: DeviceRegistry, apns_cert: ApnsCertificate
) -> None:
    """[A-RESP] 400 DeviceTokenNotForTopic. Ambiguous: a new certificate (new topic) makes every token say
    it, so the advice is to upload the renewed certificate, not a new one."""
    token = device(registry, topic="com.apple.mgmt.External.another")
    check(
        send(registry, apns_cert, wake_up(token)),
        Expected(400, "DeviceTokenNotForTopic", Outcome.dead_token, "renewed"),
    )


@pytest.mark.parametrize(
    ("mark", "expected_reason"), [("unregister", "Unregistered"), ("expire_token", "ExpiredToken")]
)
def test_a_gone_token_is_permanent_with_its_timestamp(
    registry: DeviceRegistry, apns_cert: ApnsCertificate, mark: str, expected_reason: str
) -> None:
    """[A-RESP] 410 Unregistered / ExpiredToken, body `timestamp` in ms: the device's, for sure."""
    token = device(registry)
    getattr(registry, mark)(token, at=1_700_000_000.25)
    result = send(registry, apns_cert, wake_up(token))
    check(result, Expected(410, expected_reason, Outcome.permanent))
    assert result.token_invalid_since is not None
    assert result.token_invalid_since.timestamp() == 1_700_000_000.25


# -- certificates and topics ---------------------------------------------------------------------------------


def test_a_certificate_of_the_other_environment(registry: DeviceRegistry) -> None:
    """[A-RESP] 403 BadCertificateEnvironment: "the client certificate is for the wrong environment".
    The organization's configuration: held, the certificate stays valid."""
    production_only = issue_mdm_push_certificate(registry, topic=TOPIC, environments=["production"])
    token = device(registry, environment="development")
    result = send(registry, apns_credential(production_only, ApnsEnvironment.sandbox), wake_up(token))
    check(result, Expected(403, "BadCertificateEnvironment", Outcome.config, "production or sandbox"))


def test_an_unknown_or_revoked_certificate(
    registry: DeviceRegistry, push_certificate: MdmPushCertificate, apns_cert: ApnsCertificate
) -> None:
    """[A-RESP] 403 BadCertificate: the credential itself is refused."""
    registry.revoke_apns_client_certificate(push_certificate.issued.certificate)
    check(
        send(registry, apns_cert, wake_up(device(registry))),
        Expected(403, "BadCertificate", Outcome.credential),
    )


def test_a_certificate_not_allowed_the_topic(
    registry: DeviceRegistry, push_certificate: MdmPushCertificate
) -> None:
    """[A-RESP] 400 TopicDisallowed: "pushing to this topic is not allowed" (a certificate APNs lets push to
    other topics only). Config: the advice asks for the organization's MDM push certificate."""
    registry.add_apns_client_certificate(push_certificate.issued.certificate, topics=["com.example.app"])
    result = send(registry, apns_credential(push_certificate), wake_up(device(registry)))
    check(result, Expected(400, "TopicDisallowed", Outcome.config, "MDM push certificate"))


def test_an_mdm_push_to_a_topic_other_than_the_certificates_uid(
    registry: DeviceRegistry, push_certificate: MdmPushCertificate
) -> None:
    """[A-MDMPUSH] an MDM push certificate's topic is its subject UID. Even a certificate allowed another
    topic may not MDM-push to it: the emulator answers 400 TopicDisallowed ("pushing to this topic is not
    allowed" [A-RESP]), alike for every device. mdmq always sends the UID, so a raw request tries it."""
    registry.add_apns_client_certificate(
        push_certificate.issued.certificate, topics=[TOPIC, "com.example.app"]
    )
    token = device(registry, topic="com.example.app")
    response = raw(registry, push_certificate.issued, token, mdm_headers(apns_topic="com.example.app"))
    assert (response.status, reason(response)) == (400, "TopicDisallowed")
    assert answer_for(400, "TopicDisallowed").outcome is Outcome.config


def test_an_mdm_push_authorized_by_a_provider_token_is_refused(registry: DeviceRegistry) -> None:
    """MDM has no token-based authentication: "the certificate-based process is the only way to send MDM
    push notifications" [A-MDMPUSH]. Apple documents no answer for the attempt; the emulator says 400
    TopicDisallowed (providers.md §5): a configuration reason, the same for every device, that cannot pass for
    a device's (a BadDeviceToken would invalidate a fleet). mdmq reads it as config, holding the
    organization, and no longer sends it: a .p8 key is refused as an MDM credential."""
    key = ec.generate_private_key(ec.SECP256R1())
    registry.add_apns_key(team_id="TEAM123456", key_id="KEY1234567", public_key=key.public_key())
    token = device(registry)
    provider_token = jwt.encode(
        {"iss": "TEAM123456", "iat": int(time.time())}, key, algorithm="ES256", headers={"kid": "KEY1234567"}
    )
    response = raw(registry, None, token, mdm_headers(provider_token, apns_topic=TOPIC))
    assert (response.status, json.loads(response.body)) == (400, {"reason": "TopicDisallowed"})
    answer = answer_for(response.status, reason(response))
    assert answer.outcome is Outcome.config
    assert "MDM push certificate" in (answer.advice or "")


def test_no_certificate_and_no_provider_token(registry: DeviceRegistry) -> None:
    """[A-RESP] 403 MissingProviderToken: no certificate on the connection and no authorization header."""
    response = raw(registry, None, device(registry), mdm_headers(apns_topic=TOPIC))
    assert (response.status, reason(response)) == (403, "MissingProviderToken")
    assert answer_for(403, "MissingProviderToken").outcome is Outcome.credential


def test_a_payload_over_4096_bytes(
    registry: DeviceRegistry, push_certificate: MdmPushCertificate, apns_cert: ApnsCertificate
) -> None:
    """[A-SEND] 4096 bytes at most, [A-RESP] 413 PayloadTooLarge. mdmq refuses it before sending
    (payload_rejected, no status); the sandbox answers one sent anyway as Apple does."""
    token = device(registry)
    too_large = Push("d1", token=token, push_type=PushType.alert, payload={"aps": {"alert": "x" * 5000}})
    result = send(registry, apns_cert, too_large)
    assert (result.status, result.reason, result.outcome) == (
        None,
        "PayloadTooLarge",
        Outcome.payload_rejected,
    )
    body = json.dumps({"mdm": "x" * 4090}).encode()
    response = raw(registry, push_certificate.issued, token, mdm_headers(apns_topic=TOPIC), body)
    assert (response.status, reason(response)) == (413, "PayloadTooLarge")
    assert answer_for(413, "PayloadTooLarge").outcome is Outcome.payload_rejected


# -- every other documented reason: the sandbox answers it with Apple's status, mdmq reads its scope ---------

INJECTED = [
    # [A-RESP] what we built: fail that push.
    Expected(400, "MissingDeviceToken", Outcome.payload_rejected),
    Expected(400, "BadCollapseId", Outcome.payload_rejected),
    Expected(400, "BadExpirationDate", Outcome.payload_rejected),
    Expected(400, "BadMessageId", Outcome.payload_rejected),
    Expected(400, "BadPriority", Outcome.payload_rejected),
    Expected(400, "DuplicateHeaders", Outcome.payload_rejected),
    Expected(400, "InvalidPushType", Outcome.payload_rejected),
    Expected(400, "PayloadEmpty", Outcome.payload_rejected),
    Expected(404, "BadPath", Outcome.payload_rejected),
    Expected(405, "MethodNotAllowed", Outcome.payload_rejected),
    # [A-RESP] the organization's configuration: held, with the fix.
    Expected(400, "BadTopic", Outcome.config, "com.apple.mgmt."),
    Expected(400, "MissingTopic", Outcome.config, "MDM push certificate"),
    Expected(403, "BadEnvironmentKeyIdInToken", Outcome.config, "MDM push certificate"),  # [A-JWT]
    Expected(403, "BadEnvironmentKeyInToken", Outcome.config, "MDM push certificate"),  # 3p spelling (§5)
    # [A-RESP] the credential itself.
    Expected(403, "Forbidden", Outcome.credential),
    Expected(403, "InvalidProviderToken", Outcome.credential),  # [A-JWT]
    # [A-RESP] later: Apple asks for a delay and backoff on 5xx; TooManyRequests is that one device.
    Expected(429, "TooManyRequests", Outcome.transient),
    Expected(400, "IdleTimeout", Outcome.transient),
    Expected(500, "InternalServerError", Outcome.transient),
    Expected(503, "ServiceUnavailable", Outcome.transient),
    Expected(503, "Shutdown", Outcome.transient),
    Expected(429, "TooManyProviderTokenUpdates", Outcome.transient),  # [A-JWT]
    Expected(403, "UnrelatedKeyIdInToken", Outcome.transient),  # [A-JWT] open a new connection
    Expected(403, "ExpiredProviderToken", Outcome.transient),  # [A-JWT] re-sign: never the key's fault
]


@pytest.mark.parametrize("expected", INJECTED, ids=[e.reason for e in INJECTED])
def test_each_reason_has_apples_status_and_its_scope(
    registry: DeviceRegistry, apns_cert: ApnsCertificate, expected: Expected
) -> None:
    faults = FaultConfig(error_rates={expected.reason: 1.0})
    result = send(registry, apns_cert, wake_up(device(registry)), faults)
    check(result, expected)
    assert result.retry_after_s is None  # [A-RESP] APNs sends no Retry-After (docs/providers.md §5)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (400, Outcome.payload_rejected),
        (403, Outcome.credential),
        (410, Outcome.payload_rejected),
        (429, Outcome.transient),
        (500, Outcome.transient),
        (503, Outcome.transient),
    ],
)
def test_an_unknown_reason_never_touches_a_device(status: int, outcome: Outcome) -> None:
    """docs/providers.md §5: reasons Apple may add get a non-device default, never permanent or dead_token.
    (Non-JSON answers are transient: tests/integration/providers/test_garbage.py.)"""
    assert answer_for(status, "SomethingAppleAddsLater").outcome is outcome
    assert answer_for(status, None).outcome is outcome
