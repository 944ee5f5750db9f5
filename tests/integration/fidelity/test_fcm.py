"""FCM fidelity: each rule of Google's documents, the sandbox's raw answer to it and mdmq's reading of it.

Sources (docs/providers.md): [F-ERR] "ErrorCode (FCM REST v1)", [F-CODES] "FCM Error Codes", [F-TOK] "Best
practices for FCM registration token management", [F-SEND] "Method: projects.messages.send", [F-MSG] "REST
Resource: projects.messages", [F-TTL] "Set the lifespan of a message", [F-QUOTA] "FCM Throttling and
Quotas", [G-CODE] "Google API design guide: Errors". mdmq's `FcmProvider` sends every push, with a service
account exchanged for an OAuth token at the emulator's token endpoint; requests mdmq never makes (a TTL past
four weeks, a value that is not a string, an unknown path) go through the sandbox's raw HTTP/2 client with
the access token mdmq fetched. `PushResult.status` and `.reason` are the raw answer off the wire (the
FcmError `errorCode`, else the canonical status); `.outcome` and `.advice` are mdmq's reading.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox import DeviceRegistry, FaultConfig, Garbage, GarbageBurst, Sandbox
from sandbox.fcm import INVALID_TOKEN_MESSAGE
from sandbox.h2client import ClientResponse
from sandbox.testing import connect
from tests.integration.fidelity.expected import Expected, check, send_once
from tests.integration.providers.conftest import CLIENT_EMAIL, PROJECT, private_pem
from workers.providers.base import CredentialRejected, Outcome, Push, PushResult, PushType
from workers.providers.credentials import FcmServiceAccount
from workers.providers.endpoints import ProviderEndpoints
from workers.providers.fcm import QUOTA_MIN_RETRY_S, FcmProvider
from workers.providers.fcm_oauth import ClockSkewRefused

GOOGLE_NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def account(signing_key: rsa.RSAPrivateKey) -> FcmServiceAccount:
    return FcmServiceAccount(CLIENT_EMAIL, private_pem(signing_key), PROJECT)


@pytest.fixture
def registry(signing_key: rsa.RSAPrivateKey) -> DeviceRegistry:
    registry = DeviceRegistry(clock=lambda: GOOGLE_NOW)
    registry.add_fcm_service_account(CLIENT_EMAIL, signing_key.public_key(), project_id=PROJECT)
    return registry


def fcm_token() -> str:
    """[F-TOK] the format is undocumented; real tokens are an instance id, ':', then 'APA91b…'."""
    return f"{secrets.token_urlsafe(16)}:APA91b{secrets.token_urlsafe(100)}"


def device(registry: DeviceRegistry, *, project_id: str = PROJECT) -> str:
    token = fcm_token()
    registry.add_fcm_device(token, project_id=project_id)
    return token


def wake_up(token: str, **payload: Any) -> Push:
    return Push("d1", token=token, push_type=PushType.data, payload=payload or {"wake": "1"})


def endpoints_for(sandbox: Sandbox) -> ProviderEndpoints:
    return ProviderEndpoints(fcm=sandbox.fcm_url, oauth_token=f"{sandbox.fcm_url}/token")


def send(
    registry: DeviceRegistry,
    account: FcmServiceAccount,
    push: Push,
    faults: FaultConfig | None = None,
    *,
    clock_skew_s: float = 0.0,
) -> PushResult:
    """One push through mdmq's client to a sandbox of `registry`, from a host `clock_skew_s` off Google."""

    async def scenario() -> PushResult:
        async with Sandbox(registry, fcm_faults=faults) as sandbox:
            provider = FcmProvider(account, endpoints_for(sandbox), clock=lambda: GOOGLE_NOW + clock_skew_s)
            return await send_once(provider, push)

    return asyncio.run(scenario())


def raw(
    registry: DeviceRegistry, account: FcmServiceAccount, message: dict[str, Any], path: str | None = None
) -> ClientResponse:
    """One request mdmq never makes, authorized with the access token mdmq's client fetched."""

    async def scenario() -> ClientResponse:
        async with Sandbox(registry) as sandbox:
            provider = FcmProvider(account, endpoints_for(sandbox), clock=lambda: GOOGLE_NOW)
            token = await provider.tokens.current()
            await provider.close()
            client = await connect(sandbox.fcm_url)
            headers = [
                ("authorization", token.authorization.decode()),
                ("content-type", "application/json"),
            ]
            target = path or f"/v1/projects/{PROJECT}/messages:send"
            try:
                return await client.request(
                    "POST", target, headers, json.dumps({"message": message}).encode()
                )
            finally:
                await client.close()

    return asyncio.run(scenario())


def google_error(response: ClientResponse) -> tuple[int, str, list[str]]:
    """The canonical code and status, and the @type of each detail."""
    error = json.loads(response.body)["error"]
    return error["code"], error["status"], [d["@type"].rsplit("/", 1)[1] for d in error.get("details", [])]


# -- tokens --------------------------------------------------------------------------------------------------


def test_a_live_token_is_accepted(registry: DeviceRegistry, account: FcmServiceAccount) -> None:
    """[F-SEND] 200 with the message's name: accepted, which is not delivery [F-TTL]."""
    result = send(registry, account, wake_up(device(registry)))
    assert (result.status, result.reason, result.outcome, result.advice) == (
        200,
        None,
        Outcome.accepted,
        None,
    )
    assert (result.push_id or "").startswith(f"projects/{PROJECT}/messages/")


def test_an_unregistered_token_is_the_devices(registry: DeviceRegistry, account: FcmServiceAccount) -> None:
    """[F-ERR] [F-TOK] 404 UNREGISTERED: the app instance is gone; the one stale-token signal that is
    the device's for sure."""
    token = device(registry)
    registry.unregister(token)
    check(send(registry, account, wake_up(token)), Expected(404, "UNREGISTERED", Outcome.permanent))


def test_a_token_of_another_project_is_ambiguous(
    registry: DeviceRegistry, account: FcmServiceAccount
) -> None:
    """[F-ERR] 403 SENDER_ID_MISMATCH: the token is another sender's. A service account of another project
    makes every token say it, so it is a dead_token answer with the advice to upload the app's account."""
    token = device(registry, project_id="another-project")
    check(
        send(registry, account, wake_up(token)),
        Expected(403, "SENDER_ID_MISMATCH", Outcome.dead_token, "Firebase project"),
    )


@pytest.mark.parametrize(
    "token", ["ab" * 32, "fcm-token-1", fcm_token() + " "], ids=["apns-token", "short", "space"]
)
def test_a_malformed_token_is_invalid_argument_about_the_token(
    registry: DeviceRegistry, account: FcmServiceAccount, token: str
) -> None:
    """[F-CODES] [F-TOK] 400 INVALID_ARGUMENT, "The registration token is not a valid FCM registration
    token": ambiguous as well (the account or project may not match the app)."""
    response = raw(registry, account, {"token": token})
    assert google_error(response) == (400, "INVALID_ARGUMENT", ["google.firebase.fcm.v1.FcmError"])
    assert json.loads(response.body)["error"]["message"] == INVALID_TOKEN_MESSAGE
    check(
        send(registry, account, wake_up(token)),
        Expected(400, "INVALID_ARGUMENT", Outcome.dead_token, "service account"),
    )


# -- the message ---------------------------------------------------------------------------------------------


def test_data_is_counted_on_keys_and_values(registry: DeviceRegistry, account: FcmServiceAccount) -> None:
    """[F-MSG] the data payload may not exceed 4096 bytes, keys and values counted: 4096 is accepted,
    4097 is INVALID_ARGUMENT with a BadRequest violation, which is the payload's, not the token's."""
    token = device(registry)
    assert send(registry, account, wake_up(token, k="v" * 4095)).outcome is Outcome.accepted
    over = send(registry, account, wake_up(token, kk="v" * 4095))
    check(over, Expected(400, "INVALID_ARGUMENT", Outcome.payload_rejected))
    assert over.advice is None


@pytest.mark.parametrize("key", ["from", "notification", "message_type", "google.sent_time", "gcm.n.e"])
def test_reserved_data_keys_are_the_payloads(
    registry: DeviceRegistry, account: FcmServiceAccount, key: str
) -> None:
    """[F-MSG] reserved words ("from", "message_type", "google.*", "gcm.notification.*") and [F-ERR]'s
    broader "notification", "gcm*", "google*": 400 INVALID_ARGUMENT, the payload's."""
    result = send(registry, account, wake_up(device(registry), **{key: "1"}))
    check(result, Expected(400, "INVALID_ARGUMENT", Outcome.payload_rejected))


@pytest.mark.parametrize(
    ("message", "field", "fcm_error"),
    [
        ({"android": {"ttl": "2419201s"}}, "message.android.ttl", True),
        ({"android": {"ttl": "soon"}}, "message.android.ttl", False),
        ({"data": {"n": 1}}, "message.data", False),
    ],
    ids=["ttl-over-four-weeks", "ttl-not-a-duration", "value-not-a-string"],
)
def test_fields_mdmq_never_sends_are_refused_with_a_violation(
    registry: DeviceRegistry, account: FcmServiceAccount, message: dict[str, Any], field: str, fcm_error: bool
) -> None:
    """[F-TTL] [F-MSG] android.ttl is a Duration of 0 to 2,419,200 s; data values are strings. mdmq caps
    the TTL and sends structured values as JSON text, so these go raw: 400 INVALID_ARGUMENT with a
    google.rpc.BadRequest violation (and no FcmError where the JSON parser refuses it)."""
    response = raw(registry, account, {"token": device(registry), **message})
    details = ["google.firebase.fcm.v1.FcmError"] if fcm_error else []
    assert google_error(response) == (400, "INVALID_ARGUMENT", [*details, "google.rpc.BadRequest"])
    (violation,) = json.loads(response.body)["error"]["details"][-1]["fieldViolations"]
    assert violation["field"] == field


def test_mdmq_caps_the_ttl_at_four_weeks(registry: DeviceRegistry, account: FcmServiceAccount) -> None:
    """[F-TTL] a longer expiry is sent as 2,419,200 s, so a push is never refused for its lifetime."""
    push = Push("d1", token=device(registry), push_type=PushType.data, expiration_s=90 * 86_400)
    result = send(registry, account, push)
    assert result.outcome is Outcome.accepted
    assert result.sent_at is not None
    assert result.expires_at is not None
    assert (result.expires_at - result.sent_at).total_seconds() == 2_419_200


# -- the organization's configuration and credential --------------------------------------------------------


def test_the_apns_key_in_firebase_is_the_configuration(
    registry: DeviceRegistry, account: FcmServiceAccount
) -> None:
    """[F-ERR] 401 THIRD_PARTY_AUTH_ERROR: the APNs certificate or key stored in the Firebase project is
    missing or invalid. Config, not credential: the service account stays valid."""
    faults = FaultConfig(error_rates={"THIRD_PARTY_AUTH_ERROR": 1.0})
    result = send(registry, account, wake_up(device(registry)), faults)
    check(result, Expected(401, "THIRD_PARTY_AUTH_ERROR", Outcome.config, "Firebase console"))


def test_a_404_without_an_fcm_error_is_the_configuration(
    registry: DeviceRegistry, account: FcmServiceAccount
) -> None:
    """[G-CODE] 404 NOT_FOUND without an FcmError detail is not UNREGISTERED: a project or path no device
    can cause. Config, with the advice to check the project id; no token is touched."""
    faults = FaultConfig(error_rates={"NOT_FOUND": 1.0})
    result = send(registry, account, wake_up(device(registry)), faults)
    check(result, Expected(404, "NOT_FOUND", Outcome.config, "project id"))


def test_an_unknown_path_is_an_html_404_the_client_survives(
    registry: DeviceRegistry, account: FcmServiceAccount
) -> None:
    """providers.md §5 (3p: Google's front end answers HTML): an unknown path is a 404 page, not JSON. mdmq's
    client reads it without crashing, as the configuration's."""
    response = raw(registry, account, {"token": device(registry)}, path=f"/v1/projects/{PROJECT}/send")
    assert response.status == 404
    assert response.headers["content-type"].startswith("text/html")

    async def scenario() -> PushResult:
        async with Sandbox(registry) as sandbox:
            provider = FcmProvider(account, endpoints_for(sandbox), clock=lambda: GOOGLE_NOW)
            await provider.tokens.current()
            sandbox.fcm_faults.start_garbage(GarbageBurst(Garbage.html, requests=1, status=404))
            (result,) = await provider.send([wake_up(device(registry))])
            await provider.close()
            return result

    check(
        asyncio.run(scenario()), Expected(404, "unreadable answer (text/html)", Outcome.config, "project id")
    )


@pytest.mark.parametrize(("word", "status"), [("UNAUTHENTICATED", 401), ("PERMISSION_DENIED", 403)])
def test_a_refused_caller_is_the_credential_after_one_refresh(
    registry: DeviceRegistry, account: FcmServiceAccount, word: str, status: int
) -> None:
    """[F-SEND] [G-CODE] 401 UNAUTHENTICATED / 403 PERMISSION_DENIED without an FcmError: the OAuth token
    may be stale, so one new token is fetched; refused again, it is the service account's."""
    faults = FaultConfig(error_rates={word: 1.0})
    check(
        send(registry, account, wake_up(device(registry)), faults), Expected(status, word, Outcome.credential)
    )


def test_a_project_the_account_does_not_belong_to_is_permission_denied(
    registry: DeviceRegistry, signing_key: rsa.RSAPrivateKey
) -> None:
    """[G-CODE] Google answers PERMISSION_DENIED whether or not the resource exists ("... (or it may not
    exist)"): a mistyped project id is the credential's, with the advice to check the project id."""
    mistyped = FcmServiceAccount(CLIENT_EMAIL, private_pem(signing_key), "mdmq-tset")
    result = send(registry, mistyped, wake_up(device(registry)))
    check(result, Expected(403, "PERMISSION_DENIED", Outcome.credential, "project id"))


# -- nobody's ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "retry_after_s"),
    [
        ("QUOTA_EXCEEDED", 429, QUOTA_MIN_RETRY_S),  # [F-QUOTA] at least a minute, whatever Retry-After says
        ("UNAVAILABLE", 503, 7.0),  # [F-ERR] honour Retry-After
        ("INTERNAL", 500, 7.0),  # [F-ERR] retry as for UNAVAILABLE
        ("UNSPECIFIED_ERROR", 500, 7.0),  # [F-ERR] nothing known: never the device's
    ],
)
def test_overload_and_unknown_errors_are_transient(
    registry: DeviceRegistry, account: FcmServiceAccount, code: str, status: int, retry_after_s: float
) -> None:
    """[F-ERR] [F-QUOTA] transient, retried after the wait the answer asks for."""
    faults = FaultConfig(error_rates={code: 1.0}, retry_after_s=7)
    result = send(registry, account, wake_up(device(registry)), faults)
    check(result, Expected(status, code, Outcome.transient))
    assert result.retry_after_s == retry_after_s


# -- OAuth ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("skew_s", [-7200.0, 3600.0], ids=["behind", "ahead"])
def test_a_skewed_clock_is_not_a_bad_service_account(
    registry: DeviceRegistry, account: FcmServiceAccount, skew_s: float
) -> None:
    """Google's token endpoint refuses an assertion whose iat/exp are out of "a reasonable timeframe" with
    invalid_grant. That is this host's clock: ClockSkewRefused, a transient failure of the batch, never
    CredentialRejected (which would mark the service account invalid)."""
    with pytest.raises(ClockSkewRefused) as raised:
        send(registry, account, wake_up(device(registry)), clock_skew_s=skew_s)
    assert not isinstance(raised.value, CredentialRejected)


def test_another_invalid_grant_is_the_service_account(
    registry: DeviceRegistry, account: FcmServiceAccount
) -> None:
    """[F-SEND] the account unknown to Google (deleted, disabled): invalid_grant, the credential's."""
    registry.remove_fcm_service_account(CLIENT_EMAIL)
    with pytest.raises(CredentialRejected) as raised:
        send(registry, account, wake_up(fcm_token()))
    assert not isinstance(raised.value, ClockSkewRefused)
