"""Garbage from a provider: an HTML error page from something in front of it, a body that is not JSON, an
answer cut short with the connection. Each client reads it as a transient failure with a reason an admin
can read (never as the device's fault, never as accepted), and its next push goes through."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable

import pytest

from sandbox import DeviceRegistry, Garbage, GarbageBurst, Sandbox
from sandbox.faults import FaultRuntime
from tests.integration.providers.conftest import PROJECT, TOPIC, apns_endpoints, apns_token
from workers.providers.aosp import AospProvider
from workers.providers.apns import ApnsProvider
from workers.providers.base import (
    ConnectionFailed,
    CredentialRejected,
    Outcome,
    Push,
    PushProvider,
    PushResult,
    PushType,
)
from workers.providers.credentials import AospApiKey, ApnsCertificate, FcmServiceAccount
from workers.providers.endpoints import ProviderEndpoints
from workers.providers.fcm import FcmProvider

BURSTS = [
    GarbageBurst(Garbage.html, requests=1, status=502),
    GarbageBurst(Garbage.html, requests=1, status=400),
    GarbageBurst(Garbage.not_json, requests=1, status=200),
    GarbageBurst(Garbage.not_json, requests=1, status=400),
    GarbageBurst(Garbage.truncated, requests=1),
]
EXPECTED_REASON = {
    Garbage.html: "unreadable answer (text/html)",
    Garbage.not_json: "unreadable answer (application/json)",
}


def _ids(burst: GarbageBurst) -> str:
    return f"{burst.kind.value}-{burst.status}" if burst.kind is not Garbage.truncated else "truncated"


Setup = Callable[[DeviceRegistry, Sandbox], tuple[PushProvider, FaultRuntime, Push]]


def apns(certificate: ApnsCertificate) -> Setup:
    def setup(registry: DeviceRegistry, sandbox: Sandbox) -> tuple[PushProvider, FaultRuntime, Push]:
        token = apns_token()
        registry.add_apns_device(token, topic=TOPIC)
        push = Push("d1", token=token, push_type=PushType.mdm, push_magic="magic-d1")
        return ApnsProvider(certificate, apns_endpoints(sandbox)), sandbox.apns_faults, push

    return setup


def fcm(account: FcmServiceAccount) -> Setup:
    def setup(registry: DeviceRegistry, sandbox: Sandbox) -> tuple[PushProvider, FaultRuntime, Push]:
        token = secrets.token_urlsafe(120)
        registry.add_fcm_device(token, project_id=PROJECT)
        endpoints = ProviderEndpoints(fcm=sandbox.fcm_url, oauth_token=f"{sandbox.fcm_url}/token")
        push = Push("d1", token=token, push_type=PushType.data, payload={"wake": "1"})
        return FcmProvider(account, endpoints), sandbox.fcm_faults, push

    return setup


def aosp(key: AospApiKey) -> Setup:
    def setup(registry: DeviceRegistry, sandbox: Sandbox) -> tuple[PushProvider, FaultRuntime, Push]:
        token = secrets.token_hex(16)
        registry.add_aosp_device(token)
        push = Push("d1", token=token, push_type=PushType.data, payload={"wake": "1"}, expiration_s=3600)
        return AospProvider(key, ProviderEndpoints(aosp=sandbox.aosp_url)), sandbox.aosp_faults, push

    return setup


def run(
    registry: DeviceRegistry, setup: Setup, burst: GarbageBurst, *, tls: bool = False
) -> tuple[list[PushResult], list[PushResult]]:
    async def scenario() -> tuple[list[PushResult], list[PushResult]]:
        async with Sandbox(registry, tls=tls) as sandbox:
            provider, faults, push = setup(registry, sandbox)
            assert {r.outcome for r in await provider.send([push])} == {Outcome.accepted}, "before"
            faults.start_garbage(burst)
            garbled = await provider.send([push])
            assert faults.garbage_left == 0, "the garbage was sent"
            after = await provider.send([push])
            await provider.close()
            return garbled, after

    return asyncio.run(scenario())


def check(garbled: list[PushResult], after: list[PushResult], burst: GarbageBurst) -> None:
    (result,) = garbled
    assert result.outcome is Outcome.transient, result
    assert result.push_id is None or result.status != 200, "never read as accepted"
    if burst.kind is Garbage.truncated:
        assert result.reason is not None
    else:
        assert result.reason == EXPECTED_REASON[burst.kind]
        assert result.status == burst.status
    assert {r.outcome for r in after} == {Outcome.accepted}, "the next push goes through"


@pytest.mark.parametrize("provider", ["apns", "fcm", "aosp"])
@pytest.mark.parametrize("burst", BURSTS, ids=_ids)
def test_each_provider_reads_garbage_as_transient(
    registry: DeviceRegistry, request: pytest.FixtureRequest, provider: str, burst: GarbageBurst
) -> None:
    setups = {
        "apns": lambda: apns(request.getfixturevalue("apns_cert")),
        "fcm": lambda: fcm(request.getfixturevalue("fcm_account")),
        "aosp": lambda: aosp(request.getfixturevalue("aosp_key")),
    }
    # APNs is TLS only, and MDM pushes need the push certificate [A-MDMPUSH].
    check(*run(registry, setups[provider](), burst, tls=provider == "apns"), burst)


@pytest.mark.parametrize("burst", BURSTS, ids=_ids)
def test_garbage_from_the_oauth_token_endpoint_says_nothing_about_the_service_account(
    registry: DeviceRegistry, fcm_account: FcmServiceAccount, burst: GarbageBurst
) -> None:
    """The token is fetched before the first push: garbage there is a connection failure (the batch goes
    again later), never Google's refusal, which would hold every FCM deployment of the organization."""

    async def scenario() -> list[PushResult]:
        async with Sandbox(registry) as sandbox:
            provider, faults, push = fcm(fcm_account)(registry, sandbox)
            faults.start_garbage(burst)  # the first request is the token's
            with pytest.raises(ConnectionFailed) as failed:
                await provider.send([push])
            assert not isinstance(failed.value, CredentialRejected)
            after = await provider.send([push])
            await provider.close()
            return after

    assert {r.outcome for r in asyncio.run(scenario())} == {Outcome.accepted}
