"""The credential material a push provider is built from, as frozen values whose reprs hide every secret."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import InitVar, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from config.errors import MdmqError
from workers.providers.keys import bound_problem, key_der, read_private_key, rsa_key_consistent

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL)

# [A-SEND] an MDM push goes to the topic of the push certificate's subject UID, com.apple.mgmt.External.<uuid>
MDM_TOPIC_PREFIX = "com.apple.mgmt."
# What follows the prefix: the characters of Apple's topics (bundle-id characters); the topic is a header.
_MDM_TOPIC = re.compile(re.escape(MDM_TOPIC_PREFIX) + r"[A-Za-z0-9._-]+")
# [A-MDMPUSH] "MDM doesn't support token-based pushes": MDM is certificate-only. Under ~170 characters, so
# that it fits a hold reason (200) after "APNs credential refused: ".
MDM_NEEDS_CERTIFICATE = (
    "MDM pushes need the organization's MDM push certificate: an APNs token key (.p8) cannot send them "
    "(Apple: MDM doesn't support token-based pushes)"
)
# Google Cloud's project id: 6 to 30 lowercase letters, digits or hyphens, starting with a letter and not
# ending with a hyphen (https://cloud.google.com/resource-manager/docs/creating-managing-projects). It is
# a segment of the FCM URL path [F-SEND].
_PROJECT_ID = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")


class InvalidCredential(MdmqError, ValueError):
    """The credential material cannot be used; the message names the field, never its value."""


def require_printable(name: str, value: str | None) -> None:
    """`InvalidCredential` naming `name` when `value` holds a control character (below 0x20, 0x7f) or any
    other non-printing character (format, separator, unassigned): such text may end up in a header."""
    if value is not None and not value.isprintable():
        raise InvalidCredential(f"{name} contains a control or non-printing character")


def require_project_id(project_id: str) -> None:
    """`InvalidCredential` unless `project_id` has the shape of a Google Cloud project id."""
    require_printable("the project id", project_id)
    if not _PROJECT_ID.fullmatch(project_id):
        raise InvalidCredential(
            "the project id is not a Google Cloud project id (6-30 lowercase letters, digits or hyphens, "
            "starting with a letter)"
        )


class ApnsEnvironment(StrEnum):
    production = "production"
    sandbox = "sandbox"


def _fingerprint(kind: str, *parts: str) -> str:
    # A stable digest of the whole material: equal material gives an equal provider to reuse.
    digest = hashlib.sha256(kind.encode())
    for part in parts:
        digest.update(b"\x00" + part.encode())
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ApnsTokenKey:
    """An APNs auth key (.p8, ES256) with its key id and team id: signs the provider JWTs. Never an MDM
    credential [A-MDMPUSH]: a stored one is refused (`MDM_NEEDS_CERTIFICATE`)."""

    private_key_pem: str = field(repr=False)
    key_id: str
    team_id: str
    topic: str
    environment: ApnsEnvironment = ApnsEnvironment.production

    def __post_init__(self) -> None:
        key = _load_private_key(self.private_key_pem, "private_key_pem")
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise InvalidCredential("private_key_pem is not an ES256 (P-256) key")
        if not (self.key_id and self.team_id and self.topic):
            raise InvalidCredential("key_id, team_id and topic are required")
        for name, value in (
            ("the key id", self.key_id),
            ("the team id", self.team_id),
            ("the topic", self.topic),
        ):
            require_printable(name, value)  # [A-JWT] the key id is the JWT's `kid`, the topic a header

    @property
    def fingerprint(self) -> str:
        return _fingerprint(
            "apns-token", self.private_key_pem, self.key_id, self.team_id, self.topic, self.environment
        )


@dataclass(frozen=True, slots=True)
class ApnsCertificate:
    """An APNs MDM push certificate (TLS client certificate) and its key; the topic and `not_after` are read
    from the certificate."""

    certificate_pem: str = field(repr=False)
    private_key_pem: str = field(repr=False)
    topic: str
    environment: ApnsEnvironment
    not_after: datetime

    @classmethod
    def from_pem(
        cls,
        certificate_pem: str,
        private_key_pem: str,
        *,
        environment: ApnsEnvironment = ApnsEnvironment.production,
        check_key: bool = True,
    ) -> ApnsCertificate:
        """Reads `not_after` and the topic: the subject's UID, which must be an MDM topic [A-SEND].
        `check_key` False skips an RSA key's consistency check, as `FcmServiceAccount.from_json`."""
        try:
            certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
        except ValueError:
            raise InvalidCredential("certificate_pem is not a PEM certificate") from None
        key = _load_private_key(private_key_pem, "private_key_pem", check=check_key)
        if _public_der(key.public_key()) != _public_der(certificate.public_key()):
            raise InvalidCredential("the private key is not the certificate's key")
        topic = mdm_topic_of(certificate)
        return cls(certificate_pem, private_key_pem, topic, environment, certificate.not_valid_after_utc)

    @classmethod
    def from_p12(
        cls,
        data: bytes,
        password: str | None,
        *,
        environment: ApnsEnvironment = ApnsEnvironment.production,
    ) -> ApnsCertificate:
        try:
            key, certificate, _ = pkcs12.load_key_and_certificates(
                data, password.encode() if password else None
            )
        except ValueError:
            raise InvalidCredential("the PKCS#12 file cannot be opened with this password") from None
        if key is None or certificate is None:
            raise InvalidCredential("the PKCS#12 file holds no certificate and key")
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
        return cls.from_pem(certificate_pem.decode(), key_pem.decode(), environment=environment)

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.not_after

    @property
    def fingerprint(self) -> str:
        return _fingerprint(
            "apns-certificate", self.certificate_pem, self.private_key_pem, self.topic, self.environment
        )


@dataclass(frozen=True, slots=True)
class FcmServiceAccount:
    """A Google service account allowed to send through FCM for `project_id`."""

    client_email: str
    private_key_pem: str = field(repr=False)
    project_id: str
    private_key_id: str | None = None
    token_uri: str = GOOGLE_TOKEN_URI
    # The key, loaded once: loading an RSA key is costly, and the OAuth assertions need it.
    signing_key: rsa.RSAPrivateKey = field(init=False, repr=False, compare=False)
    # False for a key checked already (when it was stored): the RSA consistency check is most of the load.
    check_key: InitVar[bool] = True

    def __post_init__(self, check_key: bool) -> None:
        key = _load_private_key(self.private_key_pem, "private_key", check=check_key)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise InvalidCredential("private_key is not an RSA key")
        object.__setattr__(self, "signing_key", key)
        if not (self.client_email and self.project_id):
            raise InvalidCredential("client_email and project_id are required")
        require_project_id(self.project_id)  # a segment of the send URL's path [F-SEND]
        require_printable("the service account's client_email", self.client_email)

    @classmethod
    def from_json(
        cls, text: str, *, project_id: str | None = None, check_key: bool = True
    ) -> FcmServiceAccount:
        """From the service-account JSON file Google issues; `project_id` overrides the file's. `check_key`
        False skips the RSA key's consistency check, for a key that passed it when it was stored."""
        try:
            info = json.loads(text)
        except ValueError:
            raise InvalidCredential("the service account is not JSON") from None
        if not isinstance(info, dict):
            raise InvalidCredential("the service account is not a JSON object")
        missing = [name for name in ("client_email", "private_key") if not isinstance(info.get(name), str)]
        if missing:
            raise InvalidCredential(f"the service account lacks {', '.join(missing)}")
        return cls(
            client_email=info["client_email"],
            private_key_pem=info["private_key"],
            project_id=project_id or info.get("project_id", ""),
            private_key_id=info.get("private_key_id"),
            token_uri=info.get("token_uri") or GOOGLE_TOKEN_URI,
            check_key=check_key,
        )

    @property
    def fingerprint(self) -> str:
        return _fingerprint(
            "fcm",
            self.client_email,
            self.private_key_pem,
            self.project_id,
            self.private_key_id or "",
            self.token_uri,
        )


@dataclass(frozen=True, slots=True)
class AospApiKey:
    """The secret API key of a Pushy-compatible push service."""

    api_key: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.api_key:
            raise InvalidCredential("api_key is required")

    @property
    def fingerprint(self) -> str:
        return _fingerprint("aosp", self.api_key)


Credential = ApnsTokenKey | ApnsCertificate | FcmServiceAccount | AospApiKey


def _load_private_key(pem: str, name: str, *, check: bool = True) -> Any:
    """The key, refused before any costly check when mdmq takes no such key (`bound_problem`: an RSA key
    over 4096 bits, an EC key on another curve than P-256). `check` False skips an RSA key's consistency
    check (its primes against its modulus and exponents), most of a load: for a key that passed it once
    already, or whose check the caller runs elsewhere (`KeyChecks`, a process pool in the API)."""
    try:
        key = read_private_key(pem)
    except ValueError:
        raise InvalidCredential(f"{name} is not an unencrypted PEM private key") from None
    problem = bound_problem(key)
    if problem is not None:
        raise InvalidCredential(f"{name} {problem}")
    if check and isinstance(key, rsa.RSAPrivateKey) and not rsa_key_consistent(key_der(key)):
        raise InvalidCredential(inconsistent_key(name))
    return key


def inconsistent_key(name: str) -> str:
    return f"{name} is not a consistent RSA key (its primes and exponents do not match its modulus)"


def mdm_topic_of(certificate: x509.Certificate) -> str:
    """The MDM topic of a push certificate: its subject's UID [A-SEND], which starts with
    `com.apple.mgmt.` [A-MDMPUSH]; `InvalidCredential` when it has none or another."""
    uids = certificate.subject.get_attributes_for_oid(NameOID.USER_ID)
    if not uids:
        raise InvalidCredential(
            "the certificate names no topic (subject UID): it is not an MDM push certificate"
        )
    topic = str(uids[0].value)
    require_printable("the certificate's topic (subject UID)", topic)
    if not _MDM_TOPIC.fullmatch(topic):
        raise InvalidCredential(
            f"the certificate's topic (subject UID) is not a {MDM_TOPIC_PREFIX}* topic: "
            "it is not an MDM push certificate"
        )
    return topic


def _public_der(key: Any) -> bytes:
    return bytes(
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
