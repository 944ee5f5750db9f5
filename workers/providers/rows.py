"""Stored `PushCredential` rows turned into the credential a provider is built from."""

from __future__ import annotations

import functools
import re
import threading
from typing import NamedTuple

from models.enums import CredentialKind
from models.tables import PushCredential
from workers.providers.credentials import (
    AospApiKey,
    ApnsCertificate,
    ApnsEnvironment,
    ApnsTokenKey,
    Credential,
    FcmServiceAccount,
    InvalidCredential,
)

# A stored APNs certificate is one PEM bundle: the certificate and its private key.
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)


def credential_from_row(row: PushCredential, *, stored: bool = True) -> Credential:
    """The provider credential for `row`; `InvalidCredential`, naming no secret, if it is unusable.

    `stored` False for material on its way in (`store_credential`): it gets every check. A stored row passed
    them when it was stored, so its RSA key is loaded without the consistency check again (56 ms of CPU,
    in the first chunk of every worker process's first rollout).

    Every dispatch chunk asks, and loading a private key is costly (an RSA service account's, some 35 ms of
    CPU: a third of a worker's time before this cache), so each distinct stored credential is loaded once.
    The key is the row's whole content, so a renewed or edited credential is loaded afresh. The worker
    threads ask at once when a rollout starts; the lock makes the first load it and the others wait for it,
    where each would otherwise load it too."""
    material = _Stored(
        row.kind, row.environment.value, row.secret, row.key_id, row.team_id, row.topic, row.project_id
    )
    with _loading:
        return _credential(material, check_key=not stored)


_loading = threading.Lock()


class _Stored(NamedTuple):
    kind: CredentialKind
    environment: str
    secret: str
    key_id: str | None
    team_id: str | None
    topic: str | None
    project_id: str | None

    def __repr__(self) -> str:  # never the secret
        return f"_Stored({self.kind.value}, {self.environment})"


@functools.lru_cache(maxsize=256)
def _credential(row: _Stored, *, check_key: bool) -> Credential:
    environment = ApnsEnvironment(row.environment)
    if row.kind is CredentialKind.apns_token:
        if not (row.key_id and row.team_id and row.topic):
            raise InvalidCredential("an APNs token key needs its key id, team id and topic")
        return ApnsTokenKey(row.secret, row.key_id, row.team_id, row.topic, environment)
    if row.kind is CredentialKind.apns_certificate:
        certificate, key = _certificate_and_key(row.secret)
        return ApnsCertificate.from_pem(certificate, key, environment=environment, topic=row.topic)
    if row.kind is CredentialKind.fcm_service_account:
        return FcmServiceAccount.from_json(row.secret, project_id=row.project_id, check_key=check_key)
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
