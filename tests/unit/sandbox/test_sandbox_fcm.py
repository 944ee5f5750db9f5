"""The FCM emulator over real HTTP/2: OAuth token exchange, send, and each error in Google's format."""

from __future__ import annotations

import json
import random
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox import Delivery, DeviceRegistry, FaultConfig, Sandbox
from sandbox.fcm import INVALID_TOKEN_MESSAGE, MISMATCH_PREFIX, UNREGISTERED_PREFIX, well_formed
from sandbox.fleet import _fcm_token
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


def well_formed_token(tag: str) -> str:
    """A token of the real shape [F-TOK]: an instance id, a colon, APA91b and the token proper."""
    return f"{tag:_<22}:APA91b" + "x" * 134


def test_device_errors(world: World) -> None:
    gone, foreign, never_seen = (well_formed_token(t) for t in ("gone", "foreign", "never-seen"))
    world.registry.add_fcm_device(gone, project_id=PROJECT)
    world.registry.unregister(gone)
    world.registry.add_fcm_device(foreign, project_id="another-project")

    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        token = await access_token(client, world)
        unregistered = await send(client, token, {"token": gone})
        mismatch = await send(client, token, {"token": foreign})
        unknown = await send(client, token, {"token": never_seen})
        no_target = await send(client, token, {"data": {}})
        await client.close()
        # [F-ERR] UNREGISTERED 404 NOT_FOUND; SENDER_ID_MISMATCH 403 PERMISSION_DENIED
        assert fcm_error(unregistered) == (404, "NOT_FOUND", "UNREGISTERED")
        assert fcm_error(mismatch) == (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH")
        # [F-CODES] a token FCM never issued: INVALID_ARGUMENT, Google's words about the token
        assert fcm_error(unknown) == (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
        assert json.loads(unknown.body)["error"]["message"] == INVALID_TOKEN_MESSAGE
        assert fcm_error(no_target) == (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")

    in_sandbox(world)(body)


@pytest.mark.parametrize(
    "token",
    [
        "fcm-token-1",  # too short to be one
        "ab" * 32,  # an APNs token
        well_formed_token("spaced") + " x",
        "a:b:" + "c" * 120,  # two colons
        "é" * 120,  # not base64url
    ],
)
def test_a_malformed_token_is_invalid_argument_about_the_token(world: World, token: str) -> None:
    world.registry.add_fcm_device(token, project_id=PROJECT)  # even one registered: the shape comes first

    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        response = await send(client, await access_token(client, world), {"token": token})
        await client.close()
        # [F-CODES] [F-TOK] INVALID_ARGUMENT with an FcmError detail and the message about the token
        assert fcm_error(response) == (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
        error = json.loads(response.body)["error"]
        assert error["message"] == INVALID_TOKEN_MESSAGE
        assert len(error["details"]) == 1, "no BadRequest violation: it is about the token"

    in_sandbox(world)(body)


def test_the_simulated_fleets_tokens_are_well_formed() -> None:
    rng = random.Random(20)
    tokens = [_fcm_token(rng) for _ in range(1000)]
    assert all(well_formed(t) for t in tokens)
    assert not well_formed("ab" * 32)


def violations(response: ClientResponse) -> list[str]:
    details = json.loads(response.body)["error"].get("details") or []
    return [
        v["field"]
        for d in details
        if d["@type"] == "type.googleapis.com/google.rpc.BadRequest"
        for v in d["fieldViolations"]
    ]


def test_data_is_counted_as_google_counts_it(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        token = await access_token(client, world)
        at_limit = {"k": "v" * 4095}  # 1 + 4095 bytes
        exactly = await send(client, token, {"token": FCM_TOKEN, "data": at_limit})
        # Other fields of the message do not count towards the data limit.
        big_message = await send(
            client,
            token,
            {"token": FCM_TOKEN, "data": at_limit, "android": {"collapse_key": "c" * 100}},
        )
        over = await send(client, token, {"token": FCM_TOKEN, "data": {"kk": "v" * 4095}})
        multibyte = await send(client, token, {"token": FCM_TOKEN, "data": {"k": "é" * 2048}})
        await client.close()
        # [F-MSG] at most 4096 bytes, keys and values counted
        assert (exactly.status, big_message.status) == (200, 200)
        for response in (over, multibyte):
            assert fcm_error(response) == (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
            assert violations(response) == ["message.data"]

    in_sandbox(world)(body)


def test_data_values_are_strings_only(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        response = await send(
            client, await access_token(client, world), {"token": FCM_TOKEN, "data": {"n": 1}}
        )
        await client.close()
        # [F-MSG] map<string, string>: the parser refuses it, a BadRequest violation and no FcmError
        assert fcm_error(response) == (400, "INVALID_ARGUMENT", None)
        assert violations(response) == ["message.data"]

    in_sandbox(world)(body)


@pytest.mark.parametrize(
    "key",
    ["from", "notification", "message_type", "google.c.a", "googleFoo", "gcm.notification.title", "gcm"],
)
def test_reserved_data_keys_are_refused(world: World, key: str) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        token = await access_token(client, world)
        response = await send(client, token, {"token": FCM_TOKEN, "data": {key: "1"}})
        await client.close()
        # [F-MSG] reserved words, and [F-ERR]'s "google"/"gcm" prefixes
        assert fcm_error(response) == (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
        assert violations(response) == ["message.data"]

    in_sandbox(world)(body)


@pytest.mark.parametrize(
    ("ttl", "status", "error_code"),
    [
        ("0s", 200, None),
        ("3.5s", 200, None),
        ("2419200s", 200, None),
        ("2419201s", 400, "INVALID_ARGUMENT"),
        ("-1s", 400, "INVALID_ARGUMENT"),
        ("soon", 400, None),
        ("60", 400, None),
    ],
)
def test_android_ttl_is_a_duration_of_at_most_four_weeks(
    world: World, ttl: str, status: int, error_code: str | None
) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        token = await access_token(client, world)
        response = await send(client, token, {"token": FCM_TOKEN, "android": {"ttl": ttl}})
        await client.close()
        # [F-TTL] [F-MSG] a Duration string, 0 to 2,419,200 s
        assert response.status == status
        if status == 400:
            assert fcm_error(response) == (400, "INVALID_ARGUMENT", error_code)
            assert violations(response) == ["message.android.ttl"]

    in_sandbox(world)(body)


def test_an_unknown_path_is_an_html_404(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        token = await access_token(client, world)
        headers = [("authorization", f"Bearer {token}"), ("content-type", "application/json")]
        response = await client.request("POST", f"/v1/projects/{PROJECT}/message:send", headers, b"{}")
        await client.close()
        # docs/providers.md §5: Google's front end answers an unknown path with an HTML page
        assert response.status == 404
        assert response.headers["content-type"].startswith("text/html")
        assert not response.body.lstrip().startswith(b"{")

    in_sandbox(world)(body)


@pytest.mark.parametrize(
    ("word", "http"), [("UNAUTHENTICATED", 401), ("PERMISSION_DENIED", 403), ("NOT_FOUND", 404)]
)
def test_front_end_errors_are_injectable_without_an_fcm_error(world: World, word: str, http: int) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        response = await send(client, await access_token(client, world), {"token": FCM_TOKEN})
        await client.close()
        # [G-CODE] the canonical status alone: no FcmError detail
        assert fcm_error(response) == (http, word, None)

    in_sandbox(world, fcm_faults=FaultConfig(error_rates={word: 1.0}))(body)


def test_open_registration_tries_each_refusal_by_its_token_prefix(world: World) -> None:
    registry = DeviceRegistry(clock=world.clock, open_registration=True)
    registry.add_fcm_service_account(SA_EMAIL, world.sa_key.public_key(), project_id=PROJECT)
    open_world = World(registry, world.clock, world.apns_key, world.sa_key)

    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        token = await access_token(client, open_world)
        answers = [
            await send(client, token, {"token": t})
            for t in (
                well_formed_token("any-device"),
                well_formed_token(UNREGISTERED_PREFIX),
                well_formed_token(MISMATCH_PREFIX),
                "not-a-token",
            )
        ]
        await client.close()
        assert answers[0].status == 200
        assert [fcm_error(a)[2] for a in answers[1:]] == [
            "UNREGISTERED",
            "SENDER_ID_MISMATCH",
            "INVALID_ARGUMENT",
        ]

    in_sandbox(open_world)(body)


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


@pytest.mark.parametrize("skew_s", [-7200, 3600])
def test_an_assertion_from_a_skewed_clock_is_refused_in_googles_words(world: World, skew_s: int) -> None:
    issued_at = int(world.clock()) + skew_s

    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.fcm_url)
        response = await exchange(client, world.google_assertion(iat=issued_at, exp=issued_at + 3600))
        await client.close()
        assert response.status == 400
        assert json.loads(response.body) == {
            "error": "invalid_grant",
            "error_description": "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
            "reasonable timeframe. Check your iat and exp values in the JWT claim.",
        }
        # Dated as Google dates its answers, by the emulator's clock: the client can measure its skew.
        assert parsedate_to_datetime(response.headers["date"]).timestamp() == int(world.clock())

    in_sandbox(world)(body)
