"""mdmq's FCM client against the FCM emulator: OAuth token caching, every outcome class, Retry-After."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from sandbox import DeviceRegistry, FaultConfig, Sandbox, Storm
from tests.integration.providers.conftest import PROJECT
from workers.providers.base import CredentialRejected, Outcome, Push, PushType
from workers.providers.credentials import FcmServiceAccount
from workers.providers.endpoints import ProviderEndpoints
from workers.providers.fcm import FcmProvider


def endpoints_for(sandbox: Sandbox) -> ProviderEndpoints:
    return ProviderEndpoints(fcm=sandbox.fcm_url, oauth_token=f"{sandbox.fcm_url}/token")


def fcm_token() -> str:
    return secrets.token_urlsafe(120)


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
        assert (unregistered.outcome, unregistered.status, unregistered.reason) == (
            Outcome.permanent,
            404,
            "UNREGISTERED",
        )
        assert (mismatch.outcome, mismatch.reason) == (Outcome.permanent, "SENDER_ID_MISMATCH")
        # INVALID_ARGUMENT naming the registration token: the token is dead, not the content.
        assert (invalid_token.outcome, invalid_token.reason) == (Outcome.permanent, "INVALID_ARGUMENT")
        assert (too_big.outcome, too_big.status, too_big.reason) == (
            Outcome.payload_rejected,
            400,
            "INVALID_ARGUMENT",
        )

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("reason", "outcome", "retry_after_s"),
    [
        ("QUOTA_EXCEEDED", Outcome.transient, 60.0),
        ("UNAVAILABLE", Outcome.transient, 2.0),
        ("INTERNAL", Outcome.transient, 2.0),
        ("THIRD_PARTY_AUTH_ERROR", Outcome.credential, None),
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
        # QUOTA_EXCEEDED waits at least a minute whatever Retry-After says.
        assert result.retry_after_s == retry_after_s

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
