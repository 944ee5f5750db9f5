"""mdmq's Pushy-compatible AOSP client against the AOSP emulator: batch push, failures with their scope,
delivery polling, and a push the service no longer tracks."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from sandbox import DeviceRegistry, FaultConfig, Sandbox, Storm
from workers.providers.aosp import ADVICE_FAILED_TOKENS, AospProvider, PushGone
from workers.providers.base import Outcome, ProviderError, Push, PushType
from workers.providers.credentials import AospApiKey
from workers.providers.endpoints import ProviderEndpoints


def endpoints_for(sandbox: Sandbox) -> ProviderEndpoints:
    return ProviderEndpoints(aosp=sandbox.aosp_url)


def wake_up(device_id: str, token: str, expiration_s: int = 3600) -> Push:
    return Push(
        device_id, token=token, push_type=PushType.data, payload={"wake": "1"}, expiration_s=expiration_s
    )


def test_push_then_poll_until_delivered(registry: DeviceRegistry, aosp_key: AospApiKey) -> None:
    online, offline, unknown = secrets.token_hex(16), secrets.token_hex(16), secrets.token_hex(16)
    registry.add_aosp_device(online)
    registry.add_aosp_device(offline, online=False)

    async def scenario() -> None:
        async with Sandbox(registry) as sandbox:
            provider = AospProvider(aosp_key, endpoints_for(sandbox))
            results = await provider.send(
                [wake_up("d1", online), wake_up("d2", offline), wake_up("d3", unknown)]
            )
            push_id = results[0].push_id
            assert push_id is not None
            pending = await provider.poll(push_id)
            registry.come_online(offline)
            delivered = await provider.poll(push_id)
            with pytest.raises(PushGone):  # [P-STAT] INVALID_PUSH_ID for an id it never had
                await provider.poll("ffffffffffffffffffffffff")
            await provider.close()
        # [P-SEND] info.failed: ambiguous (another app's key fails every token), never straight dead
        assert [(r.device_id, r.outcome) for r in results] == [
            ("d1", Outcome.accepted),
            ("d2", Outcome.accepted),
            ("d3", Outcome.dead_token),
        ]
        assert (results[2].status, results[2].reason, results[2].advice) == (
            200,
            "failed",
            ADVICE_FAILED_TOKENS,
        )
        assert results[1].push_id == push_id  # one request, one push id for every device in it
        assert (pending.pending_devices, pending.delivered) == (1, False)
        assert pending.sent_at is not None
        assert pending.expires_at is not None
        assert (pending.expires_at - pending.sent_at).total_seconds() == 3600
        assert (delivered.pending_devices, delivered.delivered) == (0, True)

    asyncio.run(scenario())


def test_invalid_api_key_is_credential_and_rate_limit_transient(
    registry: DeviceRegistry, aosp_key: AospApiKey
) -> None:
    token = secrets.token_hex(16)
    registry.add_aosp_device(token)

    async def scenario() -> None:
        faults = FaultConfig(storm=Storm("RATE_LIMIT_EXCEEDED", retry_after_s=30, requests=1))
        async with Sandbox(registry, aosp_faults=faults) as sandbox:
            provider = AospProvider(aosp_key, endpoints_for(sandbox))
            (limited,) = await provider.send([wake_up("d1", token)])
            (accepted,) = await provider.send([wake_up("d1", token)])
            await provider.close()
            stranger = AospProvider(AospApiKey("not-a-key"), endpoints_for(sandbox))
            (refused,) = await stranger.send([wake_up("d1", token)])
            await stranger.close()
        assert (limited.outcome, limited.status, limited.reason, limited.retry_after_s) == (
            Outcome.transient,
            429,
            "RATE_LIMIT_EXCEEDED",
            30.0,
        )
        assert accepted.outcome is Outcome.accepted
        assert (refused.outcome, refused.status, refused.reason) == (
            Outcome.credential,
            401,
            "INVALID_API_KEY",
        )

    asyncio.run(scenario())


def test_request_bodies_beyond_the_flow_control_window_are_sent_whole(
    registry: DeviceRegistry, aosp_key: AospApiKey
) -> None:
    # Two requests of ~600 kB each, at once: more than the emulator's connection window (about 1 MiB), so
    # the second waits for WINDOW_UPDATE frames before its body can finish.
    tokens = [secrets.token_hex(300) for _ in range(2000)]
    for token in tokens:
        registry.add_aosp_device(token)
    pushes = [
        Push(f"{i:024x}", token=t, push_type=PushType.data, payload={"group": str(i % 2)})
        for i, t in enumerate(tokens)
    ]

    async def scenario() -> None:
        async with Sandbox(registry) as sandbox:
            provider = AospProvider(aosp_key, endpoints_for(sandbox), max_connections=1)
            results = await provider.send(pushes)
            await provider.close()
        assert {r.outcome for r in results} == {Outcome.accepted}
        assert len({r.push_id for r in results}) == 2

    asyncio.run(scenario())


def test_no_recipients_is_a_dead_token_answer_for_each(
    registry: DeviceRegistry, aosp_key: AospApiKey
) -> None:
    async def scenario() -> None:
        async with Sandbox(registry) as sandbox:
            provider = AospProvider(aosp_key, endpoints_for(sandbox))
            results = await provider.send(
                [wake_up("d1", secrets.token_hex(11)), wake_up("d2", secrets.token_hex(11))]
            )
            await provider.close()
        # [P-API] [P-SEND] NO_RECIPIENTS: none known under this key, which a wrong key says for all
        assert [(r.outcome, r.status, r.reason) for r in results] == [
            (Outcome.dead_token, 400, "NO_RECIPIENTS")
        ] * 2
        assert {r.advice for r in results} == {ADVICE_FAILED_TOKENS}

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        ("MISSING_API_KEY", Outcome.credential),  # [P-API]
        ("INVALID_PARAM", Outcome.payload_rejected),  # [P-API] [P-SEND]
        ("PAYLOAD_LIMIT_EXCEEDED", Outcome.payload_rejected),  # [P-SEND] data over 4 KB
        ("INTERNAL_SERVER_ERROR", Outcome.transient),  # [P-API]
        ("SERVICE_UNAVAILABLE", Outcome.transient),
    ],
)
def test_each_global_error_has_its_scope(
    registry: DeviceRegistry, aosp_key: AospApiKey, code: str, outcome: Outcome
) -> None:
    token = secrets.token_hex(11)
    registry.add_aosp_device(token)

    async def scenario() -> None:
        async with Sandbox(registry, aosp_faults=FaultConfig(error_rates={code: 1.0})) as sandbox:
            provider = AospProvider(aosp_key, endpoints_for(sandbox))
            (result,) = await provider.send([wake_up("d1", token)])
            await provider.close()
        assert (result.outcome, result.reason) == (outcome, code)
        assert result.advice is None

    asyncio.run(scenario())


def test_a_push_no_longer_tracked_raises_push_gone(registry: DeviceRegistry, aosp_key: AospApiKey) -> None:
    token = secrets.token_hex(11)
    registry.add_aosp_device(token, online=False)

    async def scenario() -> None:
        async with Sandbox(registry) as sandbox:
            provider = AospProvider(aosp_key, endpoints_for(sandbox))
            (result,) = await provider.send([wake_up("d1", token)])
            assert result.push_id is not None
            tracked = await provider.poll(result.push_id)
            sandbox.aosp.forget(result.push_id)
            with pytest.raises(PushGone) as gone:
                await provider.poll(result.push_id)
            await provider.close()
        assert tracked.pending_devices == 1
        # [P-STAT] INVALID_PUSH_ID: expired, or (older documents) delivered to all: a ProviderError of its own
        assert isinstance(gone.value, ProviderError)

    asyncio.run(scenario())
