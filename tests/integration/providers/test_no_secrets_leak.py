"""No log line, exception message or repr of a provider run, nor the process's cache of header encodings,
shows key material, tokens or push magic."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets

import pytest

from sandbox import DeviceRegistry, FaultConfig, Latency, SandboxThread
from tests.integration.providers.conftest import PROJECT, TOPIC, apns_token
from workers.providers import hpack_static
from workers.providers.aosp import AospProvider
from workers.providers.apns import ApnsProvider
from workers.providers.base import Push, PushType
from workers.providers.credentials import AospApiKey, ApnsCertificate, FcmServiceAccount
from workers.providers.endpoints import ProviderEndpoints
from workers.providers.fcm import FcmProvider

SANDBOX_THREAD = "mdmq-sandbox"  # the emulators' own logs (they see the requests) are not ours to judge


def pem_body(pem: str) -> list[str]:
    """The base64 lines of a PEM: any of them appearing anywhere is a leak."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def test_no_secret_in_logs_errors_or_reprs(
    caplog: pytest.LogCaptureFixture,
    registry: DeviceRegistry,
    apns_cert: ApnsCertificate,
    fcm_account: FcmServiceAccount,
    aosp_key: AospApiKey,
) -> None:
    caplog.set_level(logging.DEBUG)
    apns_tokens = [apns_token() for _ in range(300)]
    for token in apns_tokens[:-1]:
        registry.add_apns_device(token, topic=TOPIC)  # the last is unknown: BadDeviceToken
    fcm_tokens = [secrets.token_urlsafe(100) for _ in range(3)]
    registry.add_fcm_device(fcm_tokens[0], project_id=PROJECT)
    aosp_tokens = [secrets.token_hex(16) for _ in range(2)]
    registry.add_aosp_device(aosp_tokens[0], online=False)
    magics = [f"PushMagic-{secrets.token_hex(8)}" for _ in apns_tokens]
    seen: list[str] = []

    async def run(sandbox_urls: dict[str, str], ca_pem: str) -> None:
        endpoints = ProviderEndpoints(
            apns_production=sandbox_urls["apns"],
            fcm=sandbox_urls["fcm"],
            oauth_token=sandbox_urls["fcm"] + "/token",
            aosp=sandbox_urls["aosp"],
            ca_pem=ca_pem,
        )
        apns = ApnsProvider(apns_cert, endpoints)
        pushes = [
            Push(f"{i:024x}", token=t, push_magic=m)
            for i, (t, m) in enumerate(zip(apns_tokens, magics, strict=True))
        ]
        seen.extend(repr(r) for r in await apns.send(pushes))
        seen.extend(repr(p) for p in pushes[:3])
        await apns.close()

        fcm = FcmProvider(fcm_account, endpoints)
        fcm_pushes = [
            Push(f"f{i}", token=t, push_type=PushType.data, payload={"k": "v"})
            for i, t in enumerate(fcm_tokens)
        ]
        seen.extend(repr(r) for r in await fcm.send(fcm_pushes))
        await fcm.close()

        aosp = AospProvider(aosp_key, endpoints)
        aosp_results = await aosp.send(
            [Push(f"a{i}", token=t, push_type=PushType.data) for i, t in enumerate(aosp_tokens)]
        )
        seen.extend(repr(r) for r in aosp_results)
        assert aosp_results[0].push_id is not None
        seen.append(repr(await aosp.poll(aosp_results[0].push_id)))
        await aosp.close()

        # Failures whose messages could carry a secret: refused credentials, unreachable services.
        registry.remove_fcm_service_account(fcm_account.client_email)
        for failing in (
            FcmProvider(fcm_account, endpoints),
            AospProvider(AospApiKey("wrong-" + aosp_key.api_key), endpoints),
            ApnsProvider(apns_cert, ProviderEndpoints(apns_production="https://127.0.0.1:9")),
        ):
            try:
                seen.extend(repr(r) for r in await failing.send(fcm_pushes[:1]))
            except Exception as error:
                seen.extend([str(error), repr(error)])
            await failing.close()

    faults = FaultConfig(goaway_every_n_streams=100, latency=Latency.fixed(2))
    # APNs over TLS with the MDM push certificate [A-MDMPUSH]; the other emulators share the listener CA.
    with SandboxThread(registry, tls=True, apns_faults=faults) as sandbox:
        assert sandbox.tls is not None
        urls = {"apns": sandbox.apns_url, "fcm": sandbox.fcm_url, "aosp": sandbox.aosp_url}
        asyncio.run(run(urls, sandbox.tls.ca_pem.decode()))

    ours = [r for r in caplog.records if r.threadName != SANDBOX_THREAD]
    text = "\n".join([*(r.getMessage() for r in ours), *(str(r.exc_info) for r in ours), *seen])
    text += "\n".join(repr(c) for c in (apns_cert, fcm_account, aosp_key))
    # The process's header encodings outlive every connection and provider: no secret may be kept there.
    text += repr(hpack_static._CACHES)
    assert ours, "the run should have logged something at DEBUG"
    forbidden = [
        *apns_tokens,
        *magics,
        *fcm_tokens,
        *aosp_tokens,
        aosp_key.api_key,
        *pem_body(apns_cert.private_key_pem),
        *pem_body(fcm_account.private_key_pem),
    ]
    leaked = [secret[:6] + "…" for secret in forbidden if secret in text]
    assert not leaked
    assert not re.search(r"eyJ[\w-]{10,}\.", text), "a JWT reached a log or an error"
    assert "ya29." not in text, "an OAuth access token reached a log or an error"
