"""APNs providers share a TLS context (one per trust and key type), and each connection still presents its
own organization's certificate (`workers.providers.tls`)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import gc
import os
import socket
import ssl
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sandbox import DeviceRegistry, FaultConfig, Latency, SandboxThread
from sandbox.tls import Issued, issue_client_certificate, issue_mdm_push_certificate, make_ca, mdm_topic
from tests.integration.providers.conftest import apns_credential, apns_endpoints, apns_token, private_pem
from workers.providers import tls
from workers.providers.apns import ApnsProvider
from workers.providers.base import ConnectionFailed, CredentialRejected, Outcome, Push, PushType
from workers.providers.credentials import ApnsCertificate, ApnsEnvironment
from workers.providers.endpoints import ProviderEndpoints
from workers.providers.http2 import Origin

Organization = tuple[ApnsCertificate, list[str]]


def rsa_push_certificate(registry: DeviceRegistry, ca: Issued) -> ApnsCertificate:
    """An MDM push certificate with an RSA key, as Apple's are (the sandbox issues EC ones)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    topic = mdm_topic()
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.USER_ID, topic)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    registry.add_apns_client_certificate(certificate, topics=[topic])
    return ApnsCertificate.from_pem(Issued(certificate, ca.key).cert_pem.decode(), private_pem(key))


def organization(registry: DeviceRegistry, ca: Issued, *, rsa_key: bool) -> Organization:
    if rsa_key:
        credential = rsa_push_certificate(registry, ca)
    else:
        credential = apns_credential(issue_mdm_push_certificate(registry, ca=ca))
    tokens = [apns_token() for _ in range(10)]
    for token in tokens:
        registry.add_apns_device(token, topic=credential.topic)
    return credential, tokens


def test_each_connection_presents_its_own_certificate_from_any_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = DeviceRegistry()
    ca = make_ca("shared context push CA", days=30)
    registry.add_apns_client_ca(ca.certificate)
    # EC and RSA keys alternate: a context keeps one certificate of each key type, so a context shared
    # between the two would have RSA organizations present the last EC certificate loaded (TLS 1.3).
    organizations = [organization(registry, ca, rsa_key=i % 2 == 1) for i in range(12)]
    key_types = {tls.key_type(credential.certificate_pem) for credential, _ in organizations}
    assert len(key_types) == 2
    start = threading.Barrier(2)
    serving = threading.local()
    # Each thread, once it has loaded its first certificate of a key type into the shared context, waits for
    # the other thread to load one of its own before making the TLS object. Under the lock the other thread
    # cannot: the wait times out. Without it, the TLS object would copy the other organization's certificate.
    loaded = {(half, kind): threading.Event() for half in (0, 1) for kind in key_types}
    load_chain = tls._load_chain

    def load_then_let_the_other_thread_load(
        context: ssl.SSLContext, chain_and_key_pem: tuple[str, ...]
    ) -> None:
        load_chain(context, chain_and_key_pem)
        half, kind = getattr(serving, "half", None), tls.key_type(chain_and_key_pem[0])
        if half is not None and not loaded[half, kind].is_set():
            loaded[half, kind].set()
            loaded[1 - half, kind].wait(timeout=0.5)

    monkeypatch.setattr(tls, "_load_chain", load_then_let_the_other_thread_load)

    def serve(endpoints: ProviderEndpoints, half: int, served: list[Organization]) -> list[list[Outcome]]:
        async def scenario() -> list[list[Outcome]]:
            providers = [ApnsProvider(credential, endpoints) for credential, _ in served]
            serving.half = half  # from here on, loads are into the shared context, for a connection
            start.wait()  # both threads' loops open their connections at once
            try:
                results = await asyncio.gather(
                    *(
                        provider.send(
                            [Push(f"d{i}", t, PushType.mdm, push_magic="m") for i, t in enumerate(tokens)]
                        )
                        for provider, (_, tokens) in zip(providers, served, strict=True)
                    )
                )
            finally:
                await asyncio.gather(*(provider.close() for provider in providers))
            return [[result.outcome for result in answered] for answered in results]

        return asyncio.run(scenario())

    # The emulator answers TopicDisallowed to a push whose connection presented another topic's certificate.
    with SandboxThread(registry, tls=True, apns_faults=FaultConfig(latency=Latency.fixed(20))) as sandbox:
        endpoints = apns_endpoints(sandbox)
        with ThreadPoolExecutor(2) as threads:
            # Each thread serves both key types: the two threads load into both shared contexts.
            halves = [
                threads.submit(serve, endpoints, half, organizations[half * 6 : half * 6 + 6])
                for half in (0, 1)
            ]
            outcomes = [outcome for half in halves for outcome in half.result(timeout=60)]
    assert outcomes == [[Outcome.accepted] * 10] * 12


@pytest.mark.parametrize(
    ("wrong", "refusal"),
    [
        ("key", "the APNs certificate and its key do not match"),
        ("certificate", "the APNs certificate cannot be read"),
    ],
)
def test_a_key_or_certificate_that_will_not_load_is_refused_when_the_provider_is_made(
    wrong: str, refusal: str
) -> None:
    ca = make_ca("APNs test CA")
    issued = issue_client_certificate(ca, mdm_topic())
    other = issue_client_certificate(ca, mdm_topic())
    # As no stored credential is: from_pem refuses both.
    unreadable = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    credential = ApnsCertificate(
        unreadable if wrong == "certificate" else issued.cert_pem.decode(),
        (other if wrong == "key" else issued).key_pem.decode(),
        mdm_topic(),
        ApnsEnvironment.production,
        issued.certificate.not_valid_after_utc,
    )
    with pytest.raises(CredentialRejected) as refused:
        ApnsProvider(credential, ProviderEndpoints(apns_production="https://127.0.0.1:9"))
    assert str(refused.value) == refusal


def test_a_tls_object_that_cannot_be_made_closes_the_connected_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = DeviceRegistry()
    ca = make_ca("shared context push CA", days=30)
    registry.add_apns_client_ca(ca.certificate)
    credential, tokens = organization(registry, ca, rsa_key=False)

    def no_descriptor_left(context: ssl.SSLContext, chain_and_key_pem: str) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    async def scenario(endpoints: ProviderEndpoints) -> int:
        provider = ApnsProvider(credential, endpoints)
        monkeypatch.setattr(tls, "_load_chain", no_descriptor_left)  # as each connection loads it
        try:
            with pytest.raises(ConnectionFailed, match="cannot reach APNs"):
                await provider.send([Push("d0", tokens[0], PushType.mdm, push_magic="m")])
            return sockets_connected_to(Origin.from_url(endpoints.apns_production).port)
        finally:
            await provider.close()

    gc.disable()  # a leaked socket is closed only when collected
    try:
        with SandboxThread(registry, tls=True) as sandbox:
            assert asyncio.run(scenario(apns_endpoints(sandbox))) == 0
    finally:
        gc.enable()


def sockets_connected_to(port: int) -> int:
    """This process's sockets whose peer is loopback `port`: the clients' ends, not the emulator's."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # not a socket, not connected, or the listing's own descriptor
            sock = socket.socket(fileno=int(name))
            try:
                peer = sock.getpeername()
            finally:
                sock.detach()
            count += isinstance(peer, tuple) and peer[1] == port
    return count


def test_a_forked_process_inherits_neither_the_lock_held_by_another_thread_nor_the_contexts() -> None:
    endpoints = ProviderEndpoints()
    parents = endpoints.shared_tls_context()
    read, write = os.pipe()
    with tls._Loading.lock:  # as a thread of the parent making a connection when the worker forks
        with warnings.catch_warnings():
            # Python 3.12+ warns about forking a process with threads; forking is exactly what workers do.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: it makes connections of its own
            try:
                os.write(write, b"free" if tls._Loading.lock.acquire(timeout=5) else b"held")
                os.write(write, b", own" if endpoints.shared_tls_context() is not parents else b", parent's")
            finally:
                os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 32) == b"free, own"


def test_without_memory_files_the_certificate_is_read_from_a_private_file_removed_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delattr(os, "memfd_create")  # as on macOS
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    issued = issue_client_certificate(make_ca("APNs test CA"), mdm_topic())
    pem = issued.cert_pem.decode() + issued.key_pem.decode()
    context = tls.ClientCertificateContext(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), pem)
    context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="localhost")
    assert list(tmp_path.iterdir()) == []


def test_a_refused_memory_file_falls_back_to_a_private_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def refused(name: str, flags: int = 0) -> int:
        raise PermissionError(errno.EPERM, "Operation not permitted")  # as under a seccomp filter

    monkeypatch.setattr(os, "memfd_create", refused)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    issued = issue_client_certificate(make_ca("APNs test CA"), mdm_topic())
    pem = issued.cert_pem.decode() + issued.key_pem.decode()
    context = tls.ClientCertificateContext(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), pem)
    context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="localhost")
    assert list(tmp_path.iterdir()) == []


def test_no_session_is_resumed_through_a_shared_context() -> None:
    issued = issue_client_certificate(make_ca("APNs test CA"), mdm_topic())
    pem = issued.cert_pem.decode() + issued.key_pem.decode()
    context = tls.ClientCertificateContext(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), pem)
    # asyncio never passes one; any session object stands for another organization's connection's.
    session = cast(ssl.SSLSession, object())
    with pytest.raises(ValueError, match="resumes no session"):
        context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="localhost", session=session)
