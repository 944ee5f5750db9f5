"""The APNs emulator over real HTTP/2: each reason Apple documents that a request can trigger."""

from __future__ import annotations

import json
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sandbox import Delivery, Sandbox
from sandbox.h2client import ClientResponse
from sandbox.testing import (
    APNS_TOKEN,
    DEAD_TOKEN,
    KEY_ID,
    MDM_BODY,
    OFFLINE_TOKEN,
    OTHER_TOPIC_TOKEN,
    TOPIC,
    World,
    connect,
    in_sandbox,
    mdm_headers,
    reason,
)


async def push(
    sandbox: Sandbox,
    world: World,
    token: str = APNS_TOKEN,
    *,
    body: bytes = MDM_BODY,
    method: str = "POST",
    path: str | None = None,
    jwt_token: str | None = None,
    extra: dict[str, str] | None = None,
    **headers: str,
) -> ClientResponse:
    client = await connect(sandbox.apns_url)
    try:
        request_headers = mdm_headers(jwt_token or world.apns_jwt(), **(extra or {}), **headers)
        return await client.request(method, path or f"/3/device/{token}", request_headers, body)
    finally:
        await client.close()


def test_accepted_push_echoes_apns_id_and_reaches_the_device(world: World) -> None:
    deliveries: list[Delivery] = []
    world.registry.subscribe(deliveries.append)
    apns_id = str(uuid.uuid4())

    async def body(sandbox: Sandbox) -> None:
        response = await push(sandbox, world, apns_id=apns_id)
        assert response.status == 200
        assert response.headers["apns-id"] == apns_id
        uuid.UUID(response.headers["apns-unique-id"])
        assert response.body == b""

    in_sandbox(world)(body)
    assert [(d.push_id, dict(d.payload)) for d in deliveries] == [(apns_id, json.loads(MDM_BODY))]


def test_apns_id_is_generated_when_absent_and_no_unique_id_in_production(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        response = await push(sandbox, world, apns_id="")
        assert response.status == 200
        uuid.UUID(response.headers["apns-id"])
        assert "apns-unique-id" not in response.headers

    in_sandbox(world, apns_environment="production")(body)


def test_offline_device_is_accepted_and_receives_only_the_latest_push_when_it_comes_online(
    world: World,
) -> None:
    deliveries: list[Delivery] = []
    world.registry.subscribe(deliveries.append)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())

    async def body(sandbox: Sandbox) -> None:
        assert (await push(sandbox, world, OFFLINE_TOKEN, apns_id=first)).status == 200
        assert (await push(sandbox, world, OFFLINE_TOKEN, apns_id=second)).status == 200

    in_sandbox(world)(body)
    assert deliveries == []
    world.registry.come_online(OFFLINE_TOKEN)
    assert [d.push_id for d in deliveries] == [second]


def test_unregistered_token_answers_410_with_timestamp_in_ms(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        response = await push(sandbox, world, DEAD_TOKEN)
        assert response.status == 410
        assert json.loads(response.body) == {"reason": "Unregistered", "timestamp": 1_700_000_000_500}

    in_sandbox(world)(body)


def test_expired_token_answers_410_expired_token(world: World) -> None:
    world.registry.expire_token(APNS_TOKEN)

    async def body(sandbox: Sandbox) -> None:
        response = await push(sandbox, world)
        assert (response.status, reason(response)) == (410, "ExpiredToken")
        assert "timestamp" in json.loads(response.body)

    in_sandbox(world)(body)


@pytest.mark.parametrize(
    ("headers", "status", "expected"),
    [
        ({"apns_topic": ""}, 400, "MissingTopic"),
        ({"apns_topic": "not a topic!"}, 400, "BadTopic"),
        ({"apns_id": "not-a-uuid"}, 400, "BadMessageId"),
        ({"apns_priority": "7"}, 400, "BadPriority"),
        ({"apns_expiration": "tomorrow"}, 400, "BadExpirationDate"),
        ({"apns_collapse_id": "x" * 65}, 400, "BadCollapseId"),
        ({"apns_push_type": "telepathy"}, 400, "InvalidPushType"),
    ],
)
def test_header_checks(world: World, headers: dict[str, str], status: int, expected: str) -> None:
    async def body(sandbox: Sandbox) -> None:
        response = await push(sandbox, world, extra=headers)
        assert (response.status, reason(response)) == (status, expected)

    in_sandbox(world)(body)


def test_collapse_id_of_64_bytes_and_priority_1_are_accepted(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        response = await push(sandbox, world, apns_collapse_id="x" * 64, apns_priority="1")
        assert response.status == 200

    in_sandbox(world)(body)


@pytest.mark.parametrize(
    ("token", "path", "method", "status", "expected"),
    [
        ("zz" * 32, None, "POST", 400, "BadDeviceToken"),
        ("ab" * 10, None, "POST", 400, "BadDeviceToken"),
        ("99" * 32, None, "POST", 400, "BadDeviceToken"),  # well-formed but unknown
        (OTHER_TOPIC_TOKEN, None, "POST", 400, "DeviceTokenNotForTopic"),
        ("", "/3/device/", "POST", 400, "MissingDeviceToken"),
        ("", "/3/devices/abc", "POST", 404, "BadPath"),
        (APNS_TOKEN, None, "GET", 405, "MethodNotAllowed"),
    ],
)
def test_path_method_and_token_checks(
    world: World, token: str, path: str | None, method: str, status: int, expected: str
) -> None:
    async def body(sandbox: Sandbox) -> None:
        response = await push(sandbox, world, token, path=path, method=method)
        assert (response.status, reason(response)) == (status, expected)

    in_sandbox(world)(body)


@pytest.mark.parametrize(
    ("payload", "status", "expected"),
    [
        (b"", 400, "PayloadEmpty"),
        (b"{}", 400, "PayloadEmpty"),
        (b"not json", 400, "PayloadEmpty"),
        (json.dumps({"mdm": "x" * 4090}).encode(), 413, "PayloadTooLarge"),
    ],
)
def test_payload_checks(world: World, payload: bytes, status: int, expected: str) -> None:
    async def body(sandbox: Sandbox) -> None:
        response = await push(sandbox, world, body=payload)
        assert (response.status, reason(response)) == (status, expected)

    in_sandbox(world)(body)


def test_payload_of_exactly_4096_bytes_is_accepted(world: World) -> None:
    payload = json.dumps({"mdm": "x" * (4096 - len('{"mdm": ""}'))}).encode()
    assert len(payload) == 4096

    async def body(sandbox: Sandbox) -> None:
        assert (await push(sandbox, world, body=payload)).status == 200

    in_sandbox(world)(body)


def test_duplicate_headers(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.apns_url)
        headers = [*mdm_headers(world.apns_jwt()), ("apns-topic", TOPIC)]
        response = await client.request("POST", f"/3/device/{APNS_TOKEN}", headers, MDM_BODY)
        await client.close()
        assert (response.status, reason(response)) == (400, "DuplicateHeaders")

    in_sandbox(world)(body)


# -- provider tokens --------------------------------------------------------------------------------------


def test_missing_provider_token(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        response = await push(sandbox, world, authorization="")
        assert (response.status, reason(response)) == (403, "MissingProviderToken")

    in_sandbox(world)(body)


def test_provider_token_older_than_an_hour_is_expired(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        response = await push(sandbox, world, jwt_token=world.apns_jwt(iat=world.clock() - 3601))
        assert (response.status, reason(response)) == (403, "ExpiredProviderToken")

    in_sandbox(world)(body)


def test_provider_token_expires_an_hour_after_issue_on_the_same_connection(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.apns_url)
        headers = mdm_headers(world.apns_jwt(), apns_id="")
        assert (await client.request("POST", f"/3/device/{APNS_TOKEN}", headers, MDM_BODY)).status == 200
        world.clock.advance(3601)
        response = await client.request("POST", f"/3/device/{APNS_TOKEN}", headers, MDM_BODY)
        await client.close()
        assert (response.status, reason(response)) == (403, "ExpiredProviderToken")

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
        response = await push(sandbox, world, jwt_token=token)
        assert (response.status, reason(response)) == (403, "InvalidProviderToken")

    in_sandbox(world)(body)


def test_revoked_key_is_an_invalid_provider_token(world: World) -> None:
    world.registry.revoke_apns_key(KEY_ID)

    async def body(sandbox: Sandbox) -> None:
        response = await push(sandbox, world)
        assert (response.status, reason(response)) == (403, "InvalidProviderToken")

    in_sandbox(world)(body)


def test_key_for_the_other_environment(world: World) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    world.registry.add_apns_key(
        team_id="TEAM123456", key_id="PRODONLY01", public_key=other.public_key(), environments=["production"]
    )

    async def body(sandbox: Sandbox) -> None:
        response = await push(sandbox, world, jwt_token=world.apns_jwt(kid="PRODONLY01", key=other))
        assert (response.status, reason(response)) == (403, "BadEnvironmentKeyIdInToken")

    in_sandbox(world)(body)


def test_topic_outside_the_keys_topics_is_disallowed(world: World) -> None:
    world.registry.add_apns_key(
        team_id="TEAM123456",
        key_id=KEY_ID,
        public_key=world.apns_key.public_key(),
        topics=["com.example.only"],
    )

    async def body(sandbox: Sandbox) -> None:
        response = await push(sandbox, world)
        assert (response.status, reason(response)) == (400, "TopicDisallowed")

    in_sandbox(world)(body)


def test_connection_tracks_key_id_and_token_updates(world: World) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    world.registry.add_apns_key(team_id="TEAM123456", key_id="SECONDKEY1", public_key=other.public_key())

    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.apns_url)

        async def send(token: str) -> ClientResponse:
            headers = mdm_headers(token, apns_id="")
            return await client.request("POST", f"/3/device/{APNS_TOKEN}", headers, MDM_BODY)

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
def test_injected_reasons_answer_with_apples_status(world: World, injected: str, status: int) -> None:
    from sandbox import FaultConfig

    async def body(sandbox: Sandbox) -> None:
        response = await push(sandbox, world)
        assert (response.status, reason(response)) == (status, injected)

    in_sandbox(world, apns_faults=FaultConfig(error_rates={injected: 1.0}))(body)
