"""mdmq's Pushy-compatible AOSP client against the AOSP emulator: batch push, failures, delivery polling."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from sandbox import DeviceRegistry, FaultConfig, Sandbox, Storm
from workers.providers.aosp import AospProvider, PushNotFound
from workers.providers.base import Outcome, Push, PushType
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
            with pytest.raises(PushNotFound):
                await provider.poll("ffffffffffffffffffffffff")
            await provider.close()
        assert [(r.device_id, r.outcome) for r in results] == [
            ("d1", Outcome.accepted),
            ("d2", Outcome.accepted),
            ("d3", Outcome.permanent),
        ]
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
