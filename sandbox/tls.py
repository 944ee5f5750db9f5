"""Throw-away keys and certificates for the emulators' TLS listeners and for tests; never for production."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from sandbox.registry import DeviceRegistry

# The real services' names, so that a client that insists on its production host name (SNI and
# certificate check) can be pointed at the emulator through a resolver override.
SERVICE_HOST_NAMES = (
    "localhost",
    "api.push.apple.com",
    "api.sandbox.push.apple.com",
    "api.development.push.apple.com",
    "fcm.googleapis.com",
    "oauth2.googleapis.com",
    "api.pushy.me",
)


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate with its private key, both PEM."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def make_ca(common_name: str = "mdmq sandbox CA", *, days: int = 30) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = _builder(name, name, key.public_key(), days).add_extension(
        x509.BasicConstraints(ca=True, path_length=None), critical=True
    )
    return Issued(builder.sign(key, hashes.SHA256()), key)


def issue_server_certificate(
    ca: Issued, host_names: Iterable[str] = SERVICE_HOST_NAMES, *, days: int = 30
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in host_names]
    names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mdmq sandbox")])
    builder = (
        _builder(subject, ca.certificate.subject, key.public_key(), days)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def issue_client_certificate(
    ca: Issued, topic: str, *, not_before: dt.datetime | None = None, days: int = 30
) -> Issued:
    """An APNs-style push certificate: the topic in the subject's UID, as Apple issues them."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.USER_ID, topic),
            x509.NameAttribute(NameOID.COMMON_NAME, _common_name(topic)),
        ]
    )
    builder = _builder(subject, ca.certificate.subject, key.public_key(), days, not_before).add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
    )
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


@dataclass(frozen=True, slots=True)
class MdmPushCertificate:
    """An MDM push certificate the sandbox's APNs knows: its topic, the issued pair and its CA."""

    topic: str
    issued: Issued
    ca: Issued = field(repr=False)

    @property
    def pem_bundle(self) -> str:
        """Certificate then private key, one PEM text: how a stored APNs certificate row keeps its secret."""
        return (self.issued.cert_pem + self.issued.key_pem).decode("ascii")


def mdm_topic() -> str:
    """A fresh MDM topic as Apple names them: `com.apple.mgmt.External.<uuid>`."""
    return f"com.apple.mgmt.External.{uuid.uuid4()}"


def issue_mdm_push_certificate(
    registry: DeviceRegistry,
    *,
    topic: str | None = None,
    environments: Iterable[str] = ("development", "production"),
    ca: Issued | None = None,
    not_before: dt.datetime | None = None,
    days: int = 30,
) -> MdmPushCertificate:
    """Issue a push certificate for `topic` (default: a fresh MDM topic) and register it with `registry`.

    The subject's UID is the topic, as Apple issues MDM push certificates [A-MDMPUSH]. The issuing CA (a
    throw-away one unless `ca` is given) is registered as a client CA and the certificate as known for
    `environments` ("development" or "sandbox", "production"). The sandbox reads client CAs when it starts:
    call this before starting it, or pass a `ca` registered before.
    """
    authority = ca or make_ca("mdmq sandbox push CA")
    chosen = topic or mdm_topic()
    issued = issue_client_certificate(authority, chosen, not_before=not_before, days=days)
    if ca is None:
        registry.add_apns_client_ca(authority.certificate)
    names = {"development" if name == "sandbox" else name for name in environments}
    registry.add_apns_client_certificate(issued.certificate, topics=[chosen], environments=names)
    return MdmPushCertificate(chosen, issued, authority)


def _common_name(topic: str) -> str:
    # Apple names an MDM push certificate "APSP:<uuid>" beside the UID; a common name holds 64 characters.
    prefix = "com.apple.mgmt.External."
    if topic.startswith(prefix):
        return f"APSP:{topic.removeprefix(prefix)}"[:64]
    return f"APNs: {topic}"[:64]


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    days: int,
    not_before: dt.datetime | None = None,
) -> x509.CertificateBuilder:
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
    )


@dataclass(frozen=True, slots=True)
class ServerTls:
    """What a TLS listener needs: its certificate chain and key, and the CAs of client certificates."""

    ca: Issued
    server: Issued
    client_cas: Sequence[x509.Certificate] = ()

    @property
    def ca_pem(self) -> bytes:
        """Clients trust this to accept the emulators' certificate."""
        return self.ca.cert_pem

    @classmethod
    def generate(cls, host_names: Iterable[str] = SERVICE_HOST_NAMES) -> ServerTls:
        ca = make_ca()
        return cls(ca, issue_server_certificate(ca, host_names))

    def with_client_cas(self, cas: Sequence[x509.Certificate]) -> ServerTls:
        return ServerTls(self.ca, self.server, tuple(cas))

    def server_context(self, alpn_protocols: Sequence[str] = ("h2",)) -> ssl.SSLContext:
        """A listener's context; ALPN picks the first of `alpn_protocols` that the client offers too."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(list(alpn_protocols))
        _load_chain(context, self.server)
        if self.client_cas:
            # Optional: token-auth clients present none; certificate clients must present a valid one.
            context.verify_mode = ssl.CERT_OPTIONAL
            pem = b"".join(ca.public_bytes(serialization.Encoding.PEM) for ca in self.client_cas)
            context.load_verify_locations(cadata=pem.decode("ascii"))
        return context

    def client_context(self, client: Issued | None = None) -> ssl.SSLContext:
        """A client context that trusts the emulators and speaks h2 (for tests and the benchmark)."""
        context = ssl.create_default_context(cadata=self.ca_pem.decode("ascii"))
        context.set_alpn_protocols(["h2"])
        if client is not None:
            _load_chain(context, client)
        return context


def _load_chain(context: ssl.SSLContext, issued: Issued) -> None:
    # ssl only loads key material from files; a private temporary directory keeps them off shared paths.
    with tempfile.TemporaryDirectory() as directory:
        cert_path, key_path = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert_path.write_bytes(issued.cert_pem)
        key_path.write_bytes(issued.key_pem)
        key_path.chmod(0o600)
        context.load_cert_chain(cert_path, key_path)
