"""Stored `PushCredential` rows turned into the credential a provider is built from."""

from __future__ import annotations

import functools
import re
import threading
from typing import NamedTuple

from models.enums import CredentialKind, Provider
from models.secrets import reveal
from models.tables import PushCredential
from workers.providers.credentials import (
    MDM_NEEDS_CERTIFICATE,
    AospApiKey,
    ApnsCertificate,
    ApnsEnvironment,
    Credential,
    FcmServiceAccount,
    InvalidCredential,
)

# A stored APNs certificate is one PEM bundle: the certificate and its private key.
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)

# The kinds of credential each provider is built from. An APNs token key is an APNs kind, refused with its
# own reason: mdmq sends APNs only MDM pushes, which are certificate-only [A-MDMPUSH].
KINDS = {
    Provider.apns: (CredentialKind.apns_certificate, CredentialKind.apns_token),
    Provider.fcm: (CredentialKind.fcm_service_account,),
    Provider.aosp: (CredentialKind.aosp_api_key,),
}


def credential_from_row(row: PushCredential) -> Credential:
    """The provider credential for `row`; `InvalidCredential`, naming no secret, if it is unusable: a kind
    of another provider, an APNs token key (`MDM_NEEDS_CERTIFICATE`), unreadable material, a key mdmq does
    not take (an RSA key over 4096 bits, an EC key on another curve than P-256). `CannotDecrypt` when no key
    of the ring decrypts the stored material: the key is wrong, not the credential.

    An RSA key is loaded without its costly consistency check: a stored row passed it when it was stored,
    and material on its way in gets it from `KeyChecks`, which remembers each key's answer by the key.

    Each distinct stored credential is loaded once (every dispatch chunk asks); the cache key is the row's
    whole content, so a renewed or edited credential is loaded afresh. The lock makes the first of the
    worker threads that ask at once load it, and the others wait."""
    require_kind_of(row.provider, row.kind)
    material = _Stored(row.kind, row.environment.value, reveal(row.secret), row.project_id)
    with _loading:
        return _credential(material)


_loading = threading.Lock()


def require_kind_of(provider: Provider, kind: CredentialKind) -> None:
    """`InvalidCredential` unless a `provider` credential can be of `kind`, and used for MDM pushes."""
    if kind not in KINDS[provider]:
        expected = " or ".join(k.value for k in KINDS[provider] if k is not CredentialKind.apns_token)
        raise InvalidCredential(f"a credential for {provider.value} is of kind {expected}, not {kind.value}")
    if kind is CredentialKind.apns_token:
        raise InvalidCredential(MDM_NEEDS_CERTIFICATE)


class _Stored(NamedTuple):
    kind: CredentialKind
    environment: str
    secret: str
    project_id: str | None

    def __repr__(self) -> str:  # never the secret
        return f"_Stored({self.kind.value}, {self.environment})"


@functools.lru_cache(maxsize=256)
def _credential(row: _Stored) -> Credential:
    environment = ApnsEnvironment(row.environment)
    if row.kind is CredentialKind.apns_certificate:
        certificate, key = _certificate_and_key(row.secret)
        # The topic is the certificate's own [A-SEND]: what the row says is a copy, for listing.
        return ApnsCertificate.from_pem(certificate, key, environment=environment, check_key=False)
    if row.kind is CredentialKind.fcm_service_account:
        return FcmServiceAccount.from_json(row.secret, project_id=row.project_id, check_key=False)
    return AospApiKey(row.secret)


def _certificate_and_key(bundle: str) -> tuple[str, str]:
    blocks = {match.group(1): match.group(0) for match in _PEM_BLOCK.finditer(bundle)}
    certificate = blocks.get("CERTIFICATE")
    key = next((block for label, block in blocks.items() if label.endswith("PRIVATE KEY")), None)
    if certificate is None or key is None:
        raise InvalidCredential(
            "an APNs certificate is stored as one PEM bundle: the certificate and its key"
        )
    return certificate, key
