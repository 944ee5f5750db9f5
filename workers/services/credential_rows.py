"""Stored `PushCredential` rows turned into the credential a provider is built from."""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict

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

    Each distinct stored credential is loaded once (every dispatch chunk asks), and the last `_CACHED` kept;
    the cache key is the row's whole content, its secret by digest, so a renewed or edited credential is
    loaded afresh. The lock makes the first of the worker threads that ask at once load it, and the others
    wait."""
    require_kind_of(row.provider, row.kind)
    secret = reveal(row.secret)
    # The secret's digest, not the secret: the cache keeps each credential as loaded (whose PEM text the
    # provider built from it shares) without one more copy of its decrypted material.
    key = (row.kind, row.environment.value, hashlib.sha256(secret.encode()).digest(), row.project_id)
    with _loading:
        credential = _loaded.get(key)
        if credential is not None:
            _loaded.move_to_end(key)
            return credential
        credential = _credential(row.kind, row.environment.value, secret, row.project_id)
        _loaded[key] = credential
        if len(_loaded) > _CACHED:
            _loaded.popitem(last=False)
        return credential


_CACHED = 256
_loading = threading.Lock()
# The credentials last loaded, by kind, environment, digest of the secret and project, least recent first.
_loaded: OrderedDict[tuple[CredentialKind, str, bytes, str | None], Credential] = OrderedDict()


def require_kind_of(provider: Provider, kind: CredentialKind) -> None:
    """`InvalidCredential` unless a `provider` credential can be of `kind`, and used for MDM pushes."""
    if kind not in KINDS[provider]:
        expected = " or ".join(k.value for k in KINDS[provider] if k is not CredentialKind.apns_token)
        raise InvalidCredential(f"a credential for {provider.value} is of kind {expected}, not {kind.value}")
    if kind is CredentialKind.apns_token:
        raise InvalidCredential(MDM_NEEDS_CERTIFICATE)


def _credential(kind: CredentialKind, environment: str, secret: str, project_id: str | None) -> Credential:
    if kind is CredentialKind.apns_certificate:
        certificate, key = _certificate_and_key(secret)
        # The topic is the certificate's own [A-SEND]: what the row says is a copy, for listing.
        return ApnsCertificate.from_pem(
            certificate, key, environment=ApnsEnvironment(environment), check_key=False
        )
    if kind is CredentialKind.fcm_service_account:
        return FcmServiceAccount.from_json(secret, project_id=project_id, check_key=False)
    return AospApiKey(secret)


def _certificate_and_key(bundle: str) -> tuple[str, str]:
    blocks = {match.group(1): match.group(0) for match in _PEM_BLOCK.finditer(bundle)}
    certificate = blocks.get("CERTIFICATE")
    key = next((block for label, block in blocks.items() if label.endswith("PRIVATE KEY")), None)
    if certificate is None or key is None:
        raise InvalidCredential(
            "an APNs certificate is stored as one PEM bundle: the certificate and its key"
        )
    return certificate, key
