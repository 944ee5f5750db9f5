"""A stored credential is loaded once per worker process, however many threads ask for it at once."""

from __future__ import annotations

import json
import threading

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from models.enums import CredentialKind, Provider, PushEnvironment
from models.tables import PushCredential
from workers.providers import credentials
from workers.providers.credentials import Credential, FcmServiceAccount
from workers.providers.rows import credential_from_row


def _service_account_row() -> PushCredential:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    secret = json.dumps({"client_email": "push@example.iam.gserviceaccount.com", "private_key": pem})
    return PushCredential(id="cred-1", organization_id="acme", provider=Provider.fcm,
                          kind=CredentialKind.fcm_service_account, secret=secret, fingerprint="-",
                          environment=PushEnvironment.production, project_id="acme-mdm")  # fmt: skip


def test_threads_that_ask_at_once_wait_for_the_first_load(monkeypatch: pytest.MonkeyPatch) -> None:
    row = _service_account_row()
    real_load = credentials._load_private_key
    loads: list[tuple[str, bool]] = []
    got: list[Credential] = []
    other_waited: list[bool] = []
    other = threading.Thread(target=lambda: got.append(credential_from_row(row)))

    def counted_load(pem: str, name: str, *, check: bool = True) -> object:
        loads.append((name, check))
        if len(loads) == 1:
            # While this first load is under way, a second thread asks for the same row: it must wait for
            # this load rather than start its own.
            other.start()
            other.join(timeout=0.5)
            other_waited.append(other.is_alive())
        return real_load(pem, name, check=check)

    monkeypatch.setattr(credentials, "_load_private_key", counted_load)
    first = credential_from_row(row)
    other.join()

    assert other_waited == [True]
    # Once, and without the RSA check the row passed when it was stored (store_credential's own load checks).
    assert loads == [("private_key", False)]
    assert got == [first]
    assert got[0] is first


def test_the_loaded_key_signs_and_is_never_shown() -> None:
    account = credential_from_row(_service_account_row())
    assert isinstance(account, FcmServiceAccount)
    assert isinstance(account.signing_key, rsa.RSAPrivateKey)
    assert "PRIVATE" not in repr(account)
    assert "RSAPrivateKey" not in repr(account)
