"""The FCM emulator over real HTTP/2: OAuth token exchange, send, and each error in Google's format."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox import Delivery, FaultConfig, Sandbox
from sandbox.h2client import ClientResponse, H2Client
from sandbox.testing import FCM_TOKEN, PROJECT, SA_EMAIL, World, connect, in_sandbox

GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FORM = [("content-type", "application/x-www-form-urlencoded")]


async def exchange(client: H2Client, assertion: str, grant_type: str = GRANT) -> ClientResponse:
    body = urlencode({"grant_type": grant_type, "assertion": assertion}).encode()
    return await client.request("POST", "/token", FORM, body)


async def access_token(client: H2Client, world: World) -> str:
    response = await exchange(client, world.google_assertion())
    assert response.status == 200, response.body
    return str(json.loads(response.body)["access_token"])


async def send(
    client: H2Client, token: str, message: dict[str, Any], project: str = PROJECT, **extra: Any
) -> ClientResponse:
    headers = [("authorization", f"Bearer {token}"), ("content-type", "application/json")]
    body = json.dumps({"message": message, **extra}).encode()
    return await client.request("POST", f"/v1/projects/{project}/messages:send", headers, body)


def fcm_error(response: ClientResponse) -> tuple[int, str, str | None]:
    error = json.loads(response.body)["error"]
    details = error.get("details") or [{}]
    return error["code"], error["status"], details[0].get("errorCode")


def test_token_exchange_and_send(world: World) -> None:
    deliveries: list[Delivery] = []
    world.registry.subscribe(deliveries.append)

    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        response = await exchange(client, world.google_assertion())
        granted = json.loads(response.body)
        assert granted["expires_in"] == 3599
        assert granted["token_type"] == "Bearer"
        sent = await send(client, granted["access_token"], {"token": FCM_TOKEN, "data": {"wake": "1"}})
        await client.close()
        assert sent.status == 200
        name = json.loads(sent.body)["name"]
        assert name.startswith(f"projects/{PROJECT}/messages/0:")
        assert [(d.push_id, dict(d.payload)) for d in deliveries] == [(name.rsplit("/", 1)[1], {"wake": "1"})]

    in_sandbox(world)(body)


def test_assertion_for_the_emulators_own_token_url_is_accepted(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        response = await exchange(client, world.google_assertion(aud=f"{sandbox.fcm_url}/token"))
        await client.close()
        assert response.status == 200

    in_sandbox(world)(body)


@pytest.mark.parametrize(
    ("make", "error", "fragment"),
    [
        (lambda w: w.google_assertion(aud="https://example.com/token"), "invalid_grant", "audience"),
        (
            lambda w: w.google_assertion(iss="nobody@x.iam.gserviceaccount.com"),
            "invalid_grant",
            "account not found",
        ),
        (
            lambda w: w.google_assertion(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "invalid_grant",
            "Signature",
        ),
        (
            lambda w: w.google_assertion(iat=int(w.clock()) - 7200, exp=int(w.clock()) - 3600),
            "invalid_grant",
            "iat",
        ),
        (lambda w: w.google_assertion(exp=int(w.clock()) + 7200), "invalid_grant", "short-lived"),
        (lambda w: w.google_assertion(scope=""), "invalid_scope", "scope"),
        (lambda w: "garbage", "invalid_grant", "JWT"),
    ],
)
def test_oauth_errors(world: World, make: Any, error: str, fragment: str) -> None:
    assertion = make(world)

    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        response = await exchange(client, assertion)
        await client.close()
        assert response.status == 400
        answer = json.loads(response.body)
        assert answer["error"] == error
        assert fragment in answer["error_description"]

    in_sandbox(world)(body)


def test_unsupported_grant_type(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        response = await exchange(client, world.google_assertion(), grant_type="password")
        await client.close()
        assert json.loads(response.body)["error"] == "unsupported_grant_type"

    in_sandbox(world)(body)


def test_send_without_valid_access_token_is_unauthenticated(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        response = await send(client, "ya29.forged", {"token": FCM_TOKEN})
        token = await access_token(client, world)
        world.clock.advance(3600)
        expired = await send(client, token, {"token": FCM_TOKEN})
        await client.close()
        assert fcm_error(response) == (401, "UNAUTHENTICATED", None)
        assert fcm_error(expired) == (401, "UNAUTHENTICATED", None)

    in_sandbox(world)(body)


def test_wrong_project_and_scope_are_permission_denied(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        token = await access_token(client, world)
        other_project = await send(client, token, {"token": FCM_TOKEN}, project="someone-else")
        scoped = json.loads((await exchange(client, world.google_assertion(scope="openid"))).body)[
            "access_token"
        ]
        no_scope = await send(client, scoped, {"token": FCM_TOKEN})
        await client.close()
        assert fcm_error(other_project) == (403, "PERMISSION_DENIED", None)
        assert fcm_error(no_scope) == (403, "PERMISSION_DENIED", None)

    in_sandbox(world)(body)


def test_device_errors(world: World) -> None:
    world.registry.add_fcm_device("gone", project_id=PROJECT)
    world.registry.unregister("gone")
    world.registry.add_fcm_device("foreign", project_id="another-project")

    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        token = await access_token(client, world)
        unregistered = await send(client, token, {"token": "gone"})
        mismatch = await send(client, token, {"token": "foreign"})
        unknown = await send(client, token, {"token": "never-seen"})
        bad_data = await send(client, token, {"token": FCM_TOKEN, "data": {"n": 1}})
        too_big = await send(client, token, {"token": FCM_TOKEN, "data": {"x": "y" * 4096}})
        no_target = await send(client, token, {"data": {}})
        await client.close()
        assert fcm_error(unregistered) == (404, "NOT_FOUND", "UNREGISTERED")
        assert fcm_error(mismatch) == (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH")
        for response in (unknown, bad_data, too_big, no_target):
            assert fcm_error(response) == (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")

    in_sandbox(world)(body)


def test_validate_only_does_not_deliver(world: World) -> None:
    deliveries: list[Delivery] = []
    world.registry.subscribe(deliveries.append)

    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        response = await send(
            client, await access_token(client, world), {"token": FCM_TOKEN}, validate_only=True
        )
        await client.close()
        assert response.status == 200

    in_sandbox(world)(body)
    assert deliveries == []


@pytest.mark.parametrize(
    ("code", "status", "http"),
    [
        ("QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED", 429),
        ("UNAVAILABLE", "UNAVAILABLE", 503),
        ("INTERNAL", "INTERNAL", 500),
        ("THIRD_PARTY_AUTH_ERROR", "UNAUTHENTICATED", 401),
    ],
)
def test_injected_errors(world: World, code: str, status: str, http: int) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        response = await send(client, await access_token(client, world), {"token": FCM_TOKEN})
        await client.close()
        assert fcm_error(response) == (http, status, code)
        error = json.loads(response.body)["error"]
        assert error["details"][0]["@type"] == "type.googleapis.com/google.firebase.fcm.v1.FcmError"
        if code == "QUOTA_EXCEEDED":
            assert response.headers["retry-after"] == "60"

    in_sandbox(world, fcm_faults=FaultConfig(error_rates={code: 1.0}))(body)


def test_service_account_key_is_what_signs(world: World) -> None:
    world.registry.remove_fcm_service_account(SA_EMAIL)

    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        response = await exchange(client, world.google_assertion())
        await client.close()
        assert json.loads(response.body)["error_description"] == "Invalid grant: account not found"

    in_sandbox(world)(body)
