"""mdmq's FCM client against the FCM emulator: OAuth token caching, every outcome class with its advice,
Retry-After, a refused OAuth token refreshed once, and a skewed clock told from a refused service account."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import REGISTRY

from sandbox import DeviceRegistry, FaultConfig, Garbage, GarbageBurst, Sandbox, Storm
from tests.integration.providers.conftest import CLIENT_EMAIL, PROJECT, private_pem
from workers.metrics import CLOCK_SKEW_REFUSALS
from workers.providers.base import CredentialRejected, Outcome, Push, PushType
from workers.providers.credentials import FcmServiceAccount
from workers.providers.endpoints import ProviderEndpoints
from workers.providers.fcm import (
    ADVICE_INVALID_REGISTRATION,
    ADVICE_NOT_FOUND,
    ADVICE_REFUSED,
    ADVICE_SENDER_ID_MISMATCH,
    ADVICE_THIRD_PARTY_AUTH,
    MAX_TTL_S,
    FcmProvider,
)
from workers.providers.fcm_oauth import ClockSkewRefused


def endpoints_for(sandbox: Sandbox) -> ProviderEndpoints:
    return ProviderEndpoints(fcm=sandbox.fcm_url, oauth_token=f"{sandbox.fcm_url}/token")


def fcm_token() -> str:
    """A token of the real shape [F-TOK]: an instance id, a colon, the token proper."""
    return f"{secrets.token_urlsafe(16)}:APA91b{secrets.token_urlsafe(100)}"


def data_push(device_id: str, token: str, **payload: object) -> Push:
    return Push(device_id, token=token, push_type=PushType.data, payload=payload or {"wake": "1"})


def test_every_outcome_class(registry: DeviceRegistry, fcm_account: FcmServiceAccount) -> None:
    live, gone, other_project = fcm_token(), fcm_token(), fcm_token()
    registry.add_fcm_device(live, project_id=PROJECT)
    registry.add_fcm_device(gone, project_id=PROJECT)
    registry.unregister(gone)
    registry.add_fcm_device(other_project, project_id="someone-else")

    async def scenario() -> None:
        async with Sandbox(registry) as sandbox:
            provider = FcmProvider(fcm_account, endpoints_for(sandbox))
            results = await provider.send(
                [
                    data_push("d1", live, command={"kind": "profile", "id": 7}),
                    data_push("d2", gone),
                    data_push("d3", other_project),
                    data_push("d4", fcm_token()),
                    data_push("d5", live, blob="x" * 5000),
                ]
            )
            await provider.close()
        accepted, unregistered, mismatch, invalid_token, too_big = results
        assert accepted.outcome is Outcome.accepted
        assert accepted.push_id
        assert accepted.push_id.startswith(f"projects/{PROJECT}/messages/")
        # [F-ERR] [F-TOK] UNREGISTERED: the app instance is gone, the device's for good
        assert (unregistered.outcome, unregistered.status, unregistered.reason) == (
            Outcome.permanent,
            404,
            "UNREGISTERED",
        )
        # [F-ERR] SENDER_ID_MISMATCH: ambiguous, every token says it to another project's account
        assert (mismatch.outcome, mismatch.status, mismatch.reason) == (
            Outcome.dead_token,
            403,
            "SENDER_ID_MISMATCH",
        )
        assert mismatch.advice == ADVICE_SENDER_ID_MISMATCH
        # [F-CODES] INVALID_ARGUMENT about the registration token: ambiguous as well
        assert (invalid_token.outcome, invalid_token.reason) == (Outcome.dead_token, "INVALID_ARGUMENT")
        assert invalid_token.advice == ADVICE_INVALID_REGISTRATION
        # [F-MSG] data over 4096 bytes: a BadRequest violation, the payload's
        assert (too_big.outcome, too_big.status, too_big.reason) == (
            Outcome.payload_rejected,
            400,
            "INVALID_ARGUMENT",
        )
        assert too_big.advice is None

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("reason", "outcome", "retry_after_s"),
    [
        ("QUOTA_EXCEEDED", Outcome.transient, 60.0),
        ("UNAVAILABLE", Outcome.transient, 2.0),
        ("INTERNAL", Outcome.transient, 2.0),
        ("UNSPECIFIED_ERROR", Outcome.transient, 2.0),  # [F-ERR] nothing known: never the device's
        ("THIRD_PARTY_AUTH_ERROR", Outcome.config, None),  # [F-ERR] the APNs key in Firebase
    ],
)
def test_injected_errors(
    registry: DeviceRegistry,
    fcm_account: FcmServiceAccount,
    reason: str,
    outcome: Outcome,
    retry_after_s: float | None,
) -> None:
    token = fcm_token()
    registry.add_fcm_device(token, project_id=PROJECT)

    async def scenario() -> None:
        faults = FaultConfig(storm=Storm(reason, retry_after_s=2), retry_after_s=2)
        async with Sandbox(registry, fcm_faults=faults) as sandbox:
            provider = FcmProvider(fcm_account, endpoints_for(sandbox))
            (result,) = await provider.send([data_push("d1", token)])
            await provider.close()
        assert (result.outcome, result.reason) == (outcome, reason)
        # [F-QUOTA] QUOTA_EXCEEDED waits at least a minute whatever Retry-After says.
        assert result.retry_after_s == retry_after_s
        if reason == "THIRD_PARTY_AUTH_ERROR":  # the service account stays valid: config, with the fix
            assert result.advice == ADVICE_THIRD_PARTY_AUTH

    asyncio.run(scenario())


def test_access_token_is_fetched_once_and_cached(
    registry: DeviceRegistry, fcm_account: FcmServiceAccount
) -> None:
    tokens = [fcm_token() for _ in range(50)]
    for token in tokens:
        registry.add_fcm_device(token, project_id=PROJECT)

    async def scenario() -> None:
        async with Sandbox(registry) as sandbox:
            provider = FcmProvider(fcm_account, endpoints_for(sandbox))
            # Two batches at once, then a third: one token request serves them all.
            first, second = await asyncio.gather(
                provider.send([data_push(f"a{i}", t) for i, t in enumerate(tokens[:25])]),
                provider.send([data_push(f"b{i}", t) for i, t in enumerate(tokens[25:])]),
            )
            third = await provider.send([data_push("c", tokens[0])])
            await provider.close()
        assert {r.outcome for r in [*first, *second, *third]} == {Outcome.accepted}
        assert provider.tokens.fetch_count == 1

    asyncio.run(scenario())


def test_refused_service_account_raises_credential_rejected(
    registry: DeviceRegistry, fcm_account: FcmServiceAccount
) -> None:
    registry.remove_fcm_service_account(fcm_account.client_email)

    async def scenario() -> None:
        async with Sandbox(registry) as sandbox:
            provider = FcmProvider(fcm_account, endpoints_for(sandbox))
            with pytest.raises(CredentialRejected):
                await provider.send([data_push("d1", fcm_token())])
            await provider.close()

    asyncio.run(scenario())


def test_revoked_access_token_is_refetched_once_then_held(
    registry: DeviceRegistry, fcm_account: FcmServiceAccount
) -> None:
    token = fcm_token()
    registry.add_fcm_device(token, project_id=PROJECT)

    async def scenario() -> None:
        async with Sandbox(registry) as sandbox:
            provider = FcmProvider(fcm_account, endpoints_for(sandbox))
            (before,) = await provider.send([data_push("d1", token)])
            # Google no longer honours the cached access token, nor grants a new one.
            registry.remove_fcm_service_account(fcm_account.client_email)
            after = await provider.send([data_push("d1", token), data_push("d2", token)])
            await provider.close()
        assert before.outcome is Outcome.accepted
        assert [(r.outcome, r.reason) for r in after] == [(Outcome.credential, "OAUTH_REFUSED")] * 2
        assert provider.tokens.fetch_count == 2  # one re-fetch, shared by both pushes

    asyncio.run(scenario())


@pytest.mark.parametrize(("word", "status"), [("UNAUTHENTICATED", 401), ("PERMISSION_DENIED", 403)])
def test_a_refusal_without_an_fcm_error_refreshes_the_token_once_then_is_the_credentials(
    registry: DeviceRegistry, fcm_account: FcmServiceAccount, word: str, status: int
) -> None:
    token = fcm_token()
    registry.add_fcm_device(token, project_id=PROJECT)

    async def scenario() -> None:
        async with Sandbox(registry, fcm_faults=FaultConfig(error_rates={word: 1.0})) as sandbox:
            provider = FcmProvider(fcm_account, endpoints_for(sandbox))
            (result,) = await provider.send([data_push("d1", token)])
            await provider.close()
        # [F-SEND] [G-CODE] the OAuth token may be stale: one new token, then the account's
        assert provider.tokens.fetch_count == 2
        assert (result.outcome, result.status, result.reason) == (Outcome.credential, status, word)
        assert result.advice == ADVICE_REFUSED

    asyncio.run(scenario())


def test_a_project_the_account_may_not_send_to_is_the_credentials(
    registry: DeviceRegistry, fcm_signing_key: rsa.RSAPrivateKey
) -> None:
    # A mistyped project id stored with the service account: Google answers PERMISSION_DENIED whether or
    # not the project exists [G-CODE], without an FcmError.
    mistyped = FcmServiceAccount(CLIENT_EMAIL, private_pem(fcm_signing_key), "mdmq-tset")
    token = fcm_token()
    registry.add_fcm_device(token, project_id=PROJECT)

    async def scenario() -> None:
        async with Sandbox(registry) as sandbox:
            provider = FcmProvider(mistyped, endpoints_for(sandbox))
            (result,) = await provider.send([data_push("d1", token)])
            await provider.close()
        assert (result.outcome, result.status, result.reason) == (
            Outcome.credential,
            403,
            "PERMISSION_DENIED",
        )
        assert "project id" in (result.advice or "")

    asyncio.run(scenario())


def test_a_404_without_an_fcm_error_is_the_configuration(
    registry: DeviceRegistry, fcm_account: FcmServiceAccount
) -> None:
    token = fcm_token()
    registry.add_fcm_device(token, project_id=PROJECT)

    async def scenario() -> None:
        async with Sandbox(registry, fcm_faults=FaultConfig(error_rates={"NOT_FOUND": 1.0})) as sandbox:
            provider = FcmProvider(fcm_account, endpoints_for(sandbox))
            (result,) = await provider.send([data_push("d1", token)])
            await provider.close()
        # No FcmError: not UNREGISTERED, but a project or path no device can cause. No token is touched.
        assert (result.outcome, result.status, result.reason) == (Outcome.config, 404, "NOT_FOUND")
        assert result.advice == ADVICE_NOT_FOUND

    asyncio.run(scenario())


def test_an_html_404_is_survived_as_the_configuration(
    registry: DeviceRegistry, fcm_account: FcmServiceAccount
) -> None:
    token = fcm_token()
    registry.add_fcm_device(token, project_id=PROJECT)

    async def scenario() -> None:
        async with Sandbox(registry) as sandbox:
            provider = FcmProvider(fcm_account, endpoints_for(sandbox))
            (before,) = await provider.send([data_push("d1", token)])  # the OAuth token is fetched
            # Google's front end answers a path it does not serve with an HTML page (docs/providers.md §5).
            sandbox.fcm_faults.start_garbage(GarbageBurst(Garbage.html, requests=1, status=404))
            (result,) = await provider.send([data_push("d1", token)])
            await provider.close()
        assert before.outcome is Outcome.accepted
        assert (result.outcome, result.status) == (Outcome.config, 404)
        assert result.reason == "unreadable answer (text/html)"
        assert result.advice == ADVICE_NOT_FOUND

    asyncio.run(scenario())


def test_ttl_is_capped_at_four_weeks(registry: DeviceRegistry, fcm_account: FcmServiceAccount) -> None:
    token = fcm_token()
    registry.add_fcm_device(token, project_id=PROJECT)
    push = Push("d1", token=token, push_type=PushType.data, payload={"wake": "1"}, expiration_s=60 * 86_400)

    async def scenario() -> None:
        async with Sandbox(registry) as sandbox:
            provider = FcmProvider(fcm_account, endpoints_for(sandbox))
            (result,) = await provider.send([push])
            await provider.close()
        # [F-TTL] at most 2,419,200 s: a longer expiry is sent as four weeks, not refused
        assert result.outcome is Outcome.accepted
        assert result.sent_at is not None
        assert result.expires_at is not None
        assert (result.expires_at - result.sent_at).total_seconds() == MAX_TTL_S

    asyncio.run(scenario())


def test_a_skewed_clock_is_transient_counted_and_named_never_the_service_account(
    fcm_signing_key: rsa.RSAPrivateKey, fcm_account: FcmServiceAccount, caplog: pytest.LogCaptureFixture
) -> None:
    google_now = 1_800_000_000.0
    registry = DeviceRegistry(clock=lambda: google_now)
    registry.add_fcm_service_account(CLIENT_EMAIL, fcm_signing_key.public_key(), project_id=PROJECT)
    host = socket.gethostname()
    labels = {"provider": "fcm", "host": host}
    CLOCK_SKEW_REFUSALS.labels("fcm", host)  # the series exists before the first refusal
    before = REGISTRY.get_sample_value("mdmq_clock_skew_refusals_total", labels)

    async def scenario() -> None:
        async with Sandbox(registry) as sandbox:
            # This host's clock is two hours ahead of Google's.
            provider = FcmProvider(fcm_account, endpoints_for(sandbox), clock=lambda: google_now + 7200)
            with pytest.raises(ClockSkewRefused) as raised:
                await provider.send([data_push("d1", fcm_token())])
            await provider.close()
        # Google's invalid_grant about iat/exp: the host's clock, not the account (ProviderError, not
        # CredentialRejected: the dispatch retries the batch and holds nothing).
        assert not isinstance(raised.value, CredentialRejected)
        assert host in str(raised.value)

    with caplog.at_level(logging.WARNING, logger="workers.providers.fcm_oauth"):
        asyncio.run(scenario())
    assert before is not None
    assert REGISTRY.get_sample_value("mdmq_clock_skew_refusals_total", labels) == before + 1
    (warning,) = [r.getMessage() for r in caplog.records if "clock skew" in r.getMessage()]
    assert host in warning
    assert "+7200 s off Google's" in warning


def test_another_invalid_grant_is_the_service_account(
    registry: DeviceRegistry, fcm_signing_key: rsa.RSAPrivateKey
) -> None:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = FcmServiceAccount(CLIENT_EMAIL, private_pem(other_key), PROJECT)

    async def scenario() -> None:
        async with Sandbox(registry) as sandbox:
            provider = FcmProvider(forged, endpoints_for(sandbox))
            with pytest.raises(CredentialRejected) as raised:
                await provider.send([data_push("d1", fcm_token())])
            await provider.close()
        assert not isinstance(raised.value, ClockSkewRefused)

    asyncio.run(scenario())
