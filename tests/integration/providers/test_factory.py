"""The provider factory: one provider per credential, replaced (and the old one closed) when it changes."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from sandbox import DeviceRegistry, Sandbox
from sandbox.tls import MdmPushCertificate, issue_mdm_push_certificate
from tests.integration.providers.conftest import TOPIC, apns_credential, apns_endpoints, apns_token
from workers.providers.base import ConnectionFailed, Outcome, Push
from workers.providers.credentials import AospApiKey, ApnsCertificate, ApnsTokenKey, InvalidCredential
from workers.providers.endpoints import ProviderEndpoints
from workers.providers.factory import ProviderFactory, build_provider


def test_changed_credential_replaces_the_provider(
    registry: DeviceRegistry,
    push_certificate: MdmPushCertificate,
    apns_cert: ApnsCertificate,
    aosp_key: AospApiKey,
) -> None:
    token = apns_token()
    registry.add_apns_device(token, topic=TOPIC)
    push = Push("d1", token=token, push_magic="magic")
    same_material = dataclasses.replace(apns_cert)
    # Renewed with the same Apple ID: same topic, a new certificate and key.
    renewed = apns_credential(issue_mdm_push_certificate(registry, topic=TOPIC, ca=push_certificate.ca))

    async def scenario() -> None:
        async with Sandbox(registry, tls=True) as sandbox:
            endpoints = dataclasses.replace(apns_endpoints(sandbox), aosp=sandbox.aosp_url)
            factory = ProviderFactory(endpoints)
            old = factory.provider_for("org-1", apns_cert)
            assert factory.provider_for("org-1", apns_cert) is old
            assert factory.provider_for("org-2", apns_cert) is old  # same material: shared
            assert factory.provider_for("org-1", aosp_key) is not old  # another kind, its own provider
            (before,) = await old.send([push])

            assert renewed.fingerprint != apns_cert.fingerprint
            new_for_org_1 = factory.provider_for("org-1", renewed)
            assert new_for_org_1 is not old
            (with_renewed,) = await new_for_org_1.send([push])
            assert with_renewed.outcome is Outcome.accepted
            assert factory.provider_for("org-2", same_material) is old  # org-2 still uses the old material
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


def test_an_apns_auth_key_is_no_mdm_credential(apns_key: ApnsTokenKey) -> None:
    # [A-MDMPUSH] "the certificate-based process is the only way to send MDM push notifications".
    with pytest.raises(InvalidCredential, match="MDM push certificate"):
        build_provider(apns_key, ProviderEndpoints())
