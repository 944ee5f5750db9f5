"""The APNs emulator over real HTTP/2: each reason Apple documents that a request can trigger.

Sources (providers.md): [A-RESP] "Handling notification responses from APNs", [A-SEND] "Sending notification
requests to APNs", [A-JWT] "Establishing a token-based connection to APNs", [A-MDMPUSH] "Setting up push
notifications for your device management customers". MDM pushes go over TLS with the customer's push
certificate [A-MDMPUSH]; provider-token (JWT) rules are tried with app notifications over h2c.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sandbox import Delivery, DeviceRegistry, FaultConfig, Sandbox
from sandbox.apns import OTHER_ENVIRONMENT_PREFIX, OTHER_TOPIC_PREFIX, UNREGISTERED_PREFIX
from sandbox.h2client import ClientResponse
from sandbox.testing import (
    ALERT_BODY,
    APNS_TOKEN,
    DEAD_TOKEN,
    KEY_ID,
    MDM_BODY,
    OFFLINE_TOKEN,
    OTHER_TOPIC_TOKEN,
    TOPIC,
    World,
    alert_headers,
    connect,
    connect_with_certificate,
    in_sandbox,
    mdm_headers,
    reason,
)
from sandbox.tls import (
    Issued,
    MdmPushCertificate,
    ServerTls,
    issue_client_certificate,
    issue_mdm_push_certificate,
)


@pytest.fixture(scope="module")
def tls() -> ServerTls:
    return ServerTls.generate()


@pytest.fixture
def cert(world: World) -> MdmPushCertificate:
    """The customer's MDM push certificate: subject UID = TOPIC, known in both environments."""
    return issue_mdm_push_certificate(world.registry, topic=TOPIC)


@dataclass
class Apns:
    """A TLS sandbox and the certificate its MDM pushes are sent with."""

    world: World
    tls: ServerTls
    certificate: Issued | None

    def run(self, body: object, **options: object) -> None:
        assert callable(body)
        in_sandbox(self.world, tls=self.tls, **options)(body)

    async def push(
        self,
        sandbox: Sandbox,
        token: str = APNS_TOKEN,
        *,
        url: str | None = None,
        body: bytes = MDM_BODY,
        method: str = "POST",
        path: str | None = None,
        extra: dict[str, str] | None = None,
        **headers: str,
    ) -> ClientResponse:
        client = await connect_with_certificate(url or sandbox.apns_url, self.tls, self.certificate)
        request_headers = mdm_headers(**(extra or {}), **headers)
        try:
            return await client.request(method, path or f"/3/device/{token}", request_headers, body)
        finally:
            await client.close()


@pytest.fixture
def apns(world: World, tls: ServerTls, cert: MdmPushCertificate) -> Apns:
    return Apns(world, tls, cert.issued)


async def push_with_jwt(
    sandbox: Sandbox, world: World, token: str = APNS_TOKEN, *, jwt_token: str | None = None, **headers: str
) -> ClientResponse:
    """An app notification authorized by a provider token, over h2c."""
    client = await connect(sandbox.apns_url)
    try:
        request_headers = alert_headers(jwt_token or world.apns_jwt(), **headers)
        return await client.request("POST", f"/3/device/{token}", request_headers, ALERT_BODY)
    finally:
        await client.close()


# -- accepted pushes ---------------------------------------------------------------------------------------


def test_accepted_push_echoes_apns_id_and_reaches_the_device(apns: Apns) -> None:
    deliveries: list[Delivery] = []
    apns.world.registry.subscribe(deliveries.append)
    apns_id = str(uuid.uuid4())

    async def body(sandbox: Sandbox) -> None:
        response = await apns.push(sandbox, apns_id=apns_id)
        assert response.status == 200
        assert response.headers["apns-id"] == apns_id
        assert "apns-unique-id" not in response.headers  # [A-SEND] sandbox (development) only
        assert response.body == b""

    apns.run(body)
    assert [(d.push_id, dict(d.payload)) for d in deliveries] == [(apns_id, json.loads(MDM_BODY))]


def test_development_answers_carry_an_apns_unique_id(apns: Apns) -> None:
    # [A-SEND] apns-unique-id: "only in the development environment".
    apns.world.registry.add_apns_device("ab" * 40, topic=TOPIC, environment="development")

    async def body(sandbox: Sandbox) -> None:
        response = await apns.push(sandbox, "ab" * 40, url=sandbox.apns_sandbox_url, apns_id="")
        assert response.status == 200
        uuid.UUID(response.headers["apns-id"])
        uuid.UUID(response.headers["apns-unique-id"])

    apns.run(body)


def test_offline_device_is_accepted_and_receives_only_the_latest_push_when_it_comes_online(
    apns: Apns,
) -> None:
    # [A-SEND] APNs stores one notification per device and topic; a newer one replaces it.
    deliveries: list[Delivery] = []
    apns.world.registry.subscribe(deliveries.append)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())

    async def body(sandbox: Sandbox) -> None:
        assert (await apns.push(sandbox, OFFLINE_TOKEN, apns_id=first)).status == 200
        assert (await apns.push(sandbox, OFFLINE_TOKEN, apns_id=second)).status == 200

    apns.run(body)
    assert deliveries == []
    apns.world.registry.come_online(OFFLINE_TOKEN)
    assert [d.push_id for d in deliveries] == [second]


@pytest.mark.parametrize("token", ["abc", "0" * 7, "AB" * 32, "ab" * 100], ids=["3", "7", "upper", "200"])
def test_any_hex_token_of_any_length_is_a_token(apns: Apns, token: str) -> None:
    # [A-SEND] "Don't assume a token size": even, odd, short or long hex is a token.
    apns.world.registry.add_apns_device(token, topic=TOPIC)

    async def body(sandbox: Sandbox) -> None:
        assert (await apns.push(sandbox, token)).status == 200

    apns.run(body)


# -- device tokens -----------------------------------------------------------------------------------------


def test_unregistered_token_answers_410_with_timestamp_in_ms(apns: Apns) -> None:
    async def body(sandbox: Sandbox) -> None:
        response = await apns.push(sandbox, DEAD_TOKEN)
        assert response.status == 410  # [A-RESP] Unregistered, timestamp in ms
        assert json.loads(response.body) == {"reason": "Unregistered", "timestamp": 1_700_000_000_500}

    apns.run(body)


def test_expired_token_answers_410_expired_token(apns: Apns) -> None:
    apns.world.registry.expire_token(APNS_TOKEN)

    async def body(sandbox: Sandbox) -> None:
        response = await apns.push(sandbox)
        assert (response.status, reason(response)) == (410, "ExpiredToken")  # [A-RESP]
        assert "timestamp" in json.loads(response.body)

    apns.run(body)


@pytest.mark.parametrize(
    ("token", "path", "method", "status", "expected"),
    [
        ("zz" * 32, None, "POST", 400, "BadDeviceToken"),  # [A-RESP] not hex
        ("ab-cd", None, "POST", 400, "BadDeviceToken"),  # [A-RESP] not hex
        ("99" * 32, None, "POST", 400, "BadDeviceToken"),  # [A-RESP] well-formed but unknown
        (OTHER_TOPIC_TOKEN, None, "POST", 400, "DeviceTokenNotForTopic"),  # [A-RESP]
        ("", "/3/device/", "POST", 400, "MissingDeviceToken"),  # [A-RESP]
        ("", "/3/devices/abc", "POST", 404, "BadPath"),  # [A-RESP]
        (APNS_TOKEN, None, "GET", 405, "MethodNotAllowed"),  # [A-RESP]
    ],
)
def test_path_method_and_token_checks(
    apns: Apns, token: str, path: str | None, method: str, status: int, expected: str
) -> None:
    async def body(sandbox: Sandbox) -> None:
        response = await apns.push(sandbox, token, path=path, method=method)
        assert (response.status, reason(response)) == (status, expected)

    apns.run(body)


def test_a_token_of_the_other_environment_is_a_bad_device_token(apns: Apns) -> None:
    # [A-RESP] BadDeviceToken: "...and that the token matches the environment"; [A-SEND] tokens work only in
    # their own environment.
    development = "0d" * 32
    apns.world.registry.add_apns_device(development, topic=TOPIC, environment="sandbox")

    async def body(sandbox: Sandbox) -> None:
        wrong = await apns.push(sandbox, development, url=sandbox.apns_url)
        assert (wrong.status, reason(wrong)) == (400, "BadDeviceToken")
        production = await apns.push(sandbox, APNS_TOKEN, url=sandbox.apns_sandbox_url)
        assert (production.status, reason(production)) == (400, "BadDeviceToken")
        assert (await apns.push(sandbox, development, url=sandbox.apns_sandbox_url)).status == 200

    apns.run(body)


# -- certificates and topics -------------------------------------------------------------------------------


def test_a_certificate_of_the_other_environment_is_refused(world: World, tls: ServerTls) -> None:
    # [A-RESP] 403 BadCertificateEnvironment: "The client certificate is for the wrong environment."
    development_only = issue_mdm_push_certificate(world.registry, topic=TOPIC, environments=["sandbox"])
    apns = Apns(world, tls, development_only.issued)

    async def body(sandbox: Sandbox) -> None:
        response = await apns.push(sandbox, url=sandbox.apns_url)
        assert (response.status, reason(response)) == (403, "BadCertificateEnvironment")

    apns.run(body)


def test_an_unknown_or_revoked_certificate_is_a_bad_certificate(world: World, tls: ServerTls) -> None:
    # [A-RESP] 403 BadCertificate. The CA is known; the certificate is not, then is revoked.
    known = issue_mdm_push_certificate(world.registry, topic=TOPIC)
    stranger = issue_client_certificate(known.ca, TOPIC)
    world.registry.revoke_apns_client_certificate(known.issued.certificate)

    async def body(sandbox: Sandbox) -> None:
        for certificate in (stranger, known.issued):
            response = await Apns(world, tls, certificate).push(sandbox)
            assert (response.status, reason(response)) == (403, "BadCertificate")

    Apns(world, tls, None).run(body)


def test_no_certificate_and_no_provider_token(apns: Apns) -> None:
    # [A-RESP] 403 MissingProviderToken: "No provider certificate was used to connect ... and the
    # authorization header was missing or no provider token was specified."
    anonymous = Apns(apns.world, apns.tls, None)

    async def body(sandbox: Sandbox) -> None:
        response = await anonymous.push(sandbox)
        assert (response.status, reason(response)) == (403, "MissingProviderToken")

    apns.run(body)


def test_a_certificates_only_topic_is_used_when_none_is_given(apns: Apns) -> None:
    async def body(sandbox: Sandbox) -> None:
        assert (await apns.push(sandbox, apns_topic="")).status == 200

    apns.run(body)


def test_an_mdm_push_to_a_topic_other_than_the_certificates_uid_is_disallowed(
    world: World, tls: ServerTls
) -> None:
    """[A-MDMPUSH] an MDM push certificate's topic is its subject UID. A certificate allowed other topics too
    (an app's) may not MDM-push to them: 400 TopicDisallowed, "pushing to this topic is not allowed" [A-RESP],
    a configuration answer that no device can be blamed for."""
    certificate = issue_mdm_push_certificate(world.registry, topic=TOPIC)
    world.registry.add_apns_client_certificate(
        certificate.issued.certificate, topics=[TOPIC, "com.example.app"]
    )
    world.registry.add_apns_device("ee" * 32, topic="com.example.app")
    apns = Apns(world, tls, certificate.issued)

    async def body(sandbox: Sandbox) -> None:
        response = await apns.push(sandbox, "ee" * 32, apns_topic="com.example.app")
        assert (response.status, reason(response)) == (400, "TopicDisallowed")

    apns.run(body)


def test_an_mdm_push_authorized_by_a_provider_token_is_refused(world: World) -> None:
    """MDM has no token-based authentication: the certificate is the only way [A-MDMPUSH]. Apple documents
    no answer for the attempt; the emulator says 400 TopicDisallowed (docs/providers.md §5): a configuration
    reason, alike for every device, that cannot pass for a device's (BadDeviceToken would invalidate a fleet).
    The same key may still push an app notification to the topic."""

    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.apns_url)
        mdm = await client.request("POST", f"/3/device/{APNS_TOKEN}", mdm_headers(world.apns_jwt()), MDM_BODY)
        alert = await client.request(
            "POST", f"/3/device/{APNS_TOKEN}", alert_headers(world.apns_jwt()), ALERT_BODY
        )
        await client.close()
        assert (mdm.status, reason(mdm)) == (400, "TopicDisallowed")
        assert alert.status == 200

    in_sandbox(world)(body)


def test_a_certificate_of_several_topics_needs_one(world: World, tls: ServerTls) -> None:
    # [A-RESP] 400 MissingTopic: "The apns-topic header ... was missing and ... required": a certificate
    # with several topics names none by default.
    certificate = issue_mdm_push_certificate(world.registry, topic=TOPIC)
    world.registry.add_apns_client_certificate(certificate.issued.certificate, topics=[TOPIC, "com.example"])
    apns = Apns(world, tls, certificate.issued)

    async def body(sandbox: Sandbox) -> None:
        response = await apns.push(sandbox, apns_topic="")
        assert (response.status, reason(response)) == (400, "MissingTopic")

    apns.run(body)


# -- headers and payload -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "expected"),
    [
        ({"apns_topic": "not a topic!"}, 400, "BadTopic"),
        ({"apns_id": "not-a-uuid"}, 400, "BadMessageId"),
        ({"apns_priority": "7"}, 400, "BadPriority"),
        ({"apns_expiration": "tomorrow"}, 400, "BadExpirationDate"),
        ({"apns_collapse_id": "x" * 65}, 400, "BadCollapseId"),
        ({"apns_push_type": "telepathy"}, 400, "InvalidPushType"),
    ],
)
def test_header_checks(apns: Apns, headers: dict[str, str], status: int, expected: str) -> None:
    # [A-RESP] [A-SEND] each header's rule and the reason of its breach.
    async def body(sandbox: Sandbox) -> None:
        response = await apns.push(sandbox, extra=headers)
        assert (response.status, reason(response)) == (status, expected)

    apns.run(body)


def test_collapse_id_of_64_bytes_and_priority_1_are_accepted(apns: Apns) -> None:
    async def body(sandbox: Sandbox) -> None:
        response = await apns.push(sandbox, apns_collapse_id="x" * 64, apns_priority="1")  # [A-SEND]
        assert response.status == 200

    apns.run(body)


@pytest.mark.parametrize(
    ("payload", "status", "expected"),
    [
        (b"", 400, "PayloadEmpty"),
        (b"{}", 400, "PayloadEmpty"),
        (b"not json", 400, "PayloadEmpty"),
        (json.dumps({"mdm": "x" * 4090}).encode(), 413, "PayloadTooLarge"),  # [A-SEND] 4096 bytes
    ],
)
def test_payload_checks(apns: Apns, payload: bytes, status: int, expected: str) -> None:
    async def body(sandbox: Sandbox) -> None:
        response = await apns.push(sandbox, body=payload)
        assert (response.status, reason(response)) == (status, expected)

    apns.run(body)


def test_payload_of_exactly_4096_bytes_is_accepted(apns: Apns) -> None:
    payload = json.dumps({"mdm": "x" * (4096 - len('{"mdm": ""}'))}).encode()
    assert len(payload) == 4096

    async def body(sandbox: Sandbox) -> None:
        assert (await apns.push(sandbox, body=payload)).status == 200

    apns.run(body)


def test_duplicate_headers(apns: Apns) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect_with_certificate(sandbox.apns_url, apns.tls, apns.certificate)
        headers = [*mdm_headers(), ("apns-topic", TOPIC)]
        response = await client.request("POST", f"/3/device/{APNS_TOKEN}", headers, MDM_BODY)
        await client.close()
        assert (response.status, reason(response)) == (400, "DuplicateHeaders")  # [A-RESP]

    apns.run(body)


# -- provider tokens (app notifications; never MDM) -------------------------------------------------------


def test_missing_provider_token(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        response = await push_with_jwt(sandbox, world, authorization="")
        assert (response.status, reason(response)) == (403, "MissingProviderToken")  # [A-RESP]

    in_sandbox(world)(body)


def test_provider_token_older_than_an_hour_is_expired(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        response = await push_with_jwt(sandbox, world, jwt_token=world.apns_jwt(iat=world.clock() - 3601))
        assert (response.status, reason(response)) == (403, "ExpiredProviderToken")  # [A-JWT]

    in_sandbox(world)(body)


def test_provider_token_expires_an_hour_after_issue_on_the_same_connection(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.apns_url)
        headers = alert_headers(world.apns_jwt(), apns_id="")
        assert (await client.request("POST", f"/3/device/{APNS_TOKEN}", headers, ALERT_BODY)).status == 200
        world.clock.advance(3601)
        response = await client.request("POST", f"/3/device/{APNS_TOKEN}", headers, ALERT_BODY)
        await client.close()
        assert (response.status, reason(response)) == (403, "ExpiredProviderToken")  # [A-JWT]

    in_sandbox(world)(body)


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda w: w.apns_jwt(key=ec.generate_private_key(ec.SECP256R1())), id="bad-signature"),
        pytest.param(lambda w: w.apns_jwt(kid="UNKNOWNKEY"), id="unknown-key"),
        pytest.param(lambda w: w.apns_jwt(team="OTHERTEAM1"), id="wrong-team"),
        pytest.param(lambda w: w.apns_jwt(iat=w.clock() + 3600), id="issued-in-the-future"),
        pytest.param(lambda w: "not.a.jwt", id="garbage"),
    ],
)
def test_invalid_provider_tokens(world: World, make_token: object) -> None:
    assert callable(make_token)
    token = make_token(world)

    async def body(sandbox: Sandbox) -> None:
        response = await push_with_jwt(sandbox, world, jwt_token=token)
        assert (response.status, reason(response)) == (403, "InvalidProviderToken")  # [A-RESP] [A-JWT]

    in_sandbox(world)(body)


def test_revoked_key_is_an_invalid_provider_token(world: World) -> None:
    world.registry.revoke_apns_key(KEY_ID)

    async def body(sandbox: Sandbox) -> None:
        response = await push_with_jwt(sandbox, world)
        assert (response.status, reason(response)) == (403, "InvalidProviderToken")  # [A-RESP]

    in_sandbox(world)(body)


def test_key_for_the_other_environment(world: World) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    world.registry.add_apns_key(
        team_id="TEAM123456", key_id="DEVONLY001", public_key=other.public_key(), environments=["development"]
    )

    async def body(sandbox: Sandbox) -> None:
        response = await push_with_jwt(sandbox, world, jwt_token=world.apns_jwt(kid="DEVONLY001", key=other))
        assert (response.status, reason(response)) == (403, "BadEnvironmentKeyIdInToken")  # [A-RESP]

    in_sandbox(world)(body)


def test_topic_outside_the_keys_topics_is_disallowed(world: World) -> None:
    world.registry.add_apns_key(
        team_id="TEAM123456",
        key_id=KEY_ID,
        public_key=world.apns_key.public_key(),
        topics=["com.example.only"],
    )

    async def body(sandbox: Sandbox) -> None:
        response = await push_with_jwt(sandbox, world)
        assert (response.status, reason(response)) == (400, "TopicDisallowed")  # [A-RESP]

    in_sandbox(world)(body)


def test_connection_tracks_key_id_and_token_updates(world: World) -> None:
    # [A-JWT] one key per connection; a new token no more often than every 20 minutes.
    other = ec.generate_private_key(ec.SECP256R1())
    world.registry.add_apns_key(team_id="TEAM123456", key_id="SECONDKEY1", public_key=other.public_key())

    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.apns_url)

        async def send(token: str) -> ClientResponse:
            headers = alert_headers(token, apns_id="")
            return await client.request("POST", f"/3/device/{APNS_TOKEN}", headers, ALERT_BODY)

        assert (await send(world.apns_jwt())).status == 200
        unrelated = await send(world.apns_jwt(kid="SECONDKEY1", key=other))
        assert (unrelated.status, reason(unrelated)) == (403, "UnrelatedKeyIdInToken")
        world.clock.advance(1)
        assert (await send(world.apns_jwt())).status == 200  # first update: allowed
        world.clock.advance(1)
        too_many = await send(world.apns_jwt())
        assert (too_many.status, reason(too_many)) == (429, "TooManyProviderTokenUpdates")
        world.clock.advance(20 * 60)
        assert (await send(world.apns_jwt())).status == 200
        await client.close()

    in_sandbox(world)(body)


# -- injected answers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("injected", "status"),
    [
        ("TooManyRequests", 429),
        ("InternalServerError", 500),
        ("ServiceUnavailable", 503),
        ("Shutdown", 503),
        ("IdleTimeout", 400),
        ("Forbidden", 403),
        ("BadCertificate", 403),
        ("BadCertificateEnvironment", 403),
    ],
)
def test_injected_reasons_answer_with_apples_status(apns: Apns, injected: str, status: int) -> None:
    # [A-RESP] each reason's :status; APNs sends no Retry-After [A-RESP] (docs/providers.md §5).
    async def body(sandbox: Sandbox) -> None:
        response = await apns.push(sandbox)
        assert (response.status, reason(response)) == (status, injected)
        assert "retry-after" not in response.headers

    apns.run(body, apns_faults=FaultConfig(error_rates={injected: 1.0}))


# -- open registration (`mdmq sandbox`) --------------------------------------------------------------------


@pytest.fixture
def open_apns(world: World, tls: ServerTls) -> Apns:
    """An open registry: no device registered; the push certificate comes from a CA it trusts."""
    registry = DeviceRegistry(clock=world.clock, open_registration=True)
    certificate = issue_mdm_push_certificate(registry, topic=TOPIC)
    return Apns(World(registry, world.clock, world.apns_key, world.sa_key), tls, certificate.issued)


@pytest.mark.parametrize(
    ("token", "status", "expected"),
    [
        ("ab" * 32, 200, None),
        ("abc", 200, None),  # [A-SEND] any length of hex
        ("not-hex", 400, "BadDeviceToken"),  # [A-RESP]
        (UNREGISTERED_PREFIX + "00" * 28, 410, "Unregistered"),
        (OTHER_ENVIRONMENT_PREFIX + "00" * 28, 400, "BadDeviceToken"),
        (OTHER_TOPIC_PREFIX + "00" * 28, 400, "DeviceTokenNotForTopic"),
    ],
    ids=["live", "short", "malformed", "dead", "other-environment", "other-topic"],
)
def test_open_registration_adopts_well_formed_tokens_as_the_prefixes_say(
    open_apns: Apns, token: str, status: int, expected: str | None
) -> None:
    async def body(sandbox: Sandbox) -> None:
        response = await open_apns.push(sandbox, token)
        assert (response.status, reason(response)) == (status, expected)

    open_apns.run(body)


def test_open_registration_keeps_a_token_in_the_environment_it_was_first_seen_in(open_apns: Apns) -> None:
    # [A-SEND] a token works only in its environment: once adopted by production, development refuses it.
    async def body(sandbox: Sandbox) -> None:
        assert (await open_apns.push(sandbox, "ab" * 32, url=sandbox.apns_url)).status == 200
        other = await open_apns.push(sandbox, "ab" * 32, url=sandbox.apns_sandbox_url)
        assert (other.status, reason(other)) == (400, "BadDeviceToken")

    open_apns.run(body)


def test_open_registration_accepts_any_certificate_of_its_ca_for_its_uid(
    world: World, tls: ServerTls
) -> None:
    registry = DeviceRegistry(clock=world.clock, open_registration=True)
    issued = issue_mdm_push_certificate(registry, topic=TOPIC)
    newcomer = issue_client_certificate(issued.ca, "com.apple.mgmt.External.newcomer")
    apns = Apns(World(registry, world.clock, world.apns_key, world.sa_key), tls, newcomer)

    async def body(sandbox: Sandbox) -> None:
        response = await apns.push(sandbox, apns_topic="com.apple.mgmt.External.newcomer")
        assert response.status == 200
        refused = await apns.push(sandbox, "cd" * 32, apns_topic=TOPIC)
        assert (refused.status, reason(refused)) == (400, "TopicDisallowed")  # [A-MDMPUSH] UID only

    apns.run(body)
