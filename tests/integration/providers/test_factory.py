"""The provider factory: one provider per credential, replaced (and the old one closed) when it changes."""

from __future__ import annotations

import asyncio

from sandbox import DeviceRegistry, Sandbox
from tests.integration.providers.conftest import TOPIC, apns_token
from workers.providers.base import ConnectionFailed, Outcome, Push
from workers.providers.credentials import AospApiKey, ApnsTokenKey
from workers.providers.endpoints import ProviderEndpoints
from workers.providers.factory import ProviderFactory


def test_changed_credential_replaces_the_provider(
    registry: DeviceRegistry, apns_key: ApnsTokenKey, aosp_key: AospApiKey
) -> None:
    token = apns_token()
    registry.add_apns_device(token, topic=TOPIC)
    push = Push("d1", token=token, push_magic="magic")
    renewed = ApnsTokenKey(
        apns_key.private_key_pem, apns_key.key_id, apns_key.team_id, TOPIC, apns_key.environment
    )

    async def scenario() -> None:
        async with Sandbox(registry) as sandbox:
            endpoints = ProviderEndpoints(apns_sandbox=sandbox.apns_url, aosp=sandbox.aosp_url)
            factory = ProviderFactory(endpoints)
            old = factory.provider_for("org-1", apns_key)
            assert factory.provider_for("org-1", apns_key) is old
            assert factory.provider_for("org-2", apns_key) is old  # same material: shared
            assert factory.provider_for("org-1", aosp_key) is not old  # another kind, its own provider
            (before,) = await old.send([push])

            changed = ApnsTokenKey(apns_key.private_key_pem, "KEY7654321", apns_key.team_id, TOPIC)
            assert changed.fingerprint != apns_key.fingerprint
            new_for_org_1 = factory.provider_for("org-1", changed)
            assert new_for_org_1 is not old
            assert factory.provider_for("org-2", renewed) is old  # org-2 still uses the old material
            factory.forget("org-2", "apns")  # ...until it goes: then the old provider is closed
            await factory.close()  # waits for that close too
            try:
                await old.send([push])
            except ConnectionFailed:
                closed = True
            else:
                closed = False
        assert before.outcome is Outcome.accepted
        assert closed

    asyncio.run(scenario())
