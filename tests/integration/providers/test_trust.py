"""The system's trust, read from its hashed CA directory: a TLS context loads no CA up front,
and still verifies the push service's certificate."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import DeviceRegistry, Sandbox
from sandbox.tls import ServerTls
from tests.integration.providers.conftest import TOPIC, apns_token
from tests.services import CI
from workers.providers import endpoints as endpoints_module
from workers.providers.apns import ApnsProvider
from workers.providers.base import Outcome, Push
from workers.providers.credentials import ApnsCertificate
from workers.providers.endpoints import ProviderEndpoints


@pytest.fixture
def fresh_lookup() -> Iterator[None]:
    endpoints_module._hashed_ca_directory.cache_clear()
    endpoints_module._shared_context.cache_clear()
    yield
    endpoints_module._hashed_ca_directory.cache_clear()
    endpoints_module._shared_context.cache_clear()


def hashed_directory(directory: Path, ca_pem: bytes) -> Path:
    """`directory` with the CA in it, named by subject hash as OpenSSL looks it up (`openssl rehash`)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        if CI:  # in CI no integration test may skip
            raise RuntimeError("no openssl command in CI to name the CA by its hash")
        pytest.skip("no openssl command to name the CA by its hash")
    (directory / "sandbox-ca.pem").write_bytes(ca_pem)
    subprocess.run([openssl, "rehash", str(directory)], check=True, capture_output=True)
    return directory


def test_the_system_trust_is_read_from_its_directory_on_demand(
    registry: DeviceRegistry,
    apns_cert: ApnsCertificate,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_lookup: None,
) -> None:
    tls = ServerTls.generate()
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("SSL_CERT_DIR", str(hashed_directory(tmp_path, tls.ca_pem)))
    token = apns_token()
    registry.add_apns_device(token, topic=TOPIC)

    async def scenario() -> tuple[int, Outcome]:
        async with Sandbox(registry, tls=tls) as sandbox:
            endpoints = ProviderEndpoints(apns_production=sandbox.apns_url)  # no CA of its own: the system's
            loaded = endpoints.tls_context().cert_store_stats()["x509_ca"]
            provider = ApnsProvider(apns_cert, endpoints)
            [result] = await provider.send([Push("d1", token=token, push_magic="magic")])
            await provider.close()
        return loaded, result.outcome

    assert asyncio.run(scenario()) == (0, Outcome.accepted)


def test_a_forced_ca_file_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_lookup: None
) -> None:
    tls = ServerTls.generate()
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(tls.ca_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.setenv("SSL_CERT_DIR", str(hashed_directory(tmp_path, tls.ca_pem)))
    assert ProviderEndpoints().tls_context().cert_store_stats()["x509_ca"] == 1  # the operator's file, read
