"""Stored credentials as the providers get them: loaded once per worker process however many threads ask
at once; refused, naming no secret, when mdmq cannot use them (an APNs token key, a kind of another
provider, a certificate that is not an MDM push certificate, a project id of another shape)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from models.enums import CredentialKind, Provider, PushEnvironment
from models.tables import PushCredential
from sandbox.fleet import FCM_PROJECT_ID
from sandbox.testing import PROJECT as SANDBOX_PROJECT
from sandbox.tls import issue_client_certificate, make_ca
from workers.providers import credentials
from workers.providers.credentials import (
    MDM_NEEDS_CERTIFICATE,
    ApnsCertificate,
    Credential,
    FcmServiceAccount,
    InvalidCredential,
    require_printable,
    require_project_id,
)
from workers.services import credential_rows
from workers.services.credential_rows import credential_from_row

MDM_TOPIC = "com.apple.mgmt.External.2b6f0cc9-04a1-4f0e-9d3e-6c1f6b1c1a11"


def private_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


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


def _row(provider: Provider, kind: CredentialKind, secret: str, **fields: Any) -> PushCredential:
    return PushCredential(id="cred-2", organization_id="acme", provider=provider, kind=kind, secret=secret,
                          fingerprint="-", environment=PushEnvironment.production, **fields)  # fmt: skip


def _certificate_row(topic: str, *, key: str | None = None, row_topic: str | None = None) -> PushCredential:
    issued = issue_client_certificate(make_ca(), topic)
    bundle = issued.cert_pem.decode() + (key if key is not None else issued.key_pem.decode())
    return _row(Provider.apns, CredentialKind.apns_certificate, bundle, topic=row_topic)


def test_a_loaded_certificate_is_kept_by_its_secrets_digest_and_a_renewed_one_loaded_afresh() -> None:
    row = _certificate_row(MDM_TOPIC)
    first = credential_from_row(row)
    assert isinstance(first, ApnsCertificate)

    assert credential_from_row(row) is first
    renewed = credential_from_row(_certificate_row(MDM_TOPIC))
    assert isinstance(renewed, ApnsCertificate)
    assert renewed.certificate_pem != first.certificate_pem
    # The cache holds the credential as loaded, and no other copy of the decrypted bundle.
    assert all(row.secret not in key for key in credential_rows._loaded)


def test_only_the_last_loaded_credentials_are_kept() -> None:
    rows = [_row(Provider.aosp, CredentialKind.aosp_api_key, f"key-{n:04d}") for n in range(300)]
    loaded = [credential_from_row(row) for row in rows]

    assert len(credential_rows._loaded) == credential_rows._CACHED
    assert credential_from_row(rows[-1]) is loaded[-1]
    assert credential_from_row(rows[0]) is not loaded[0]  # dropped, loaded again
    assert credential_from_row(rows[0]) == loaded[0]


def test_a_stored_apns_token_key_is_refused_with_the_reason_mdm_needs_the_certificate() -> None:
    """[A-MDMPUSH] MDM doesn't support token-based pushes: a .p8 row stored before holds its organization."""
    pem = private_pem(ec.generate_private_key(ec.SECP256R1()))
    row = _row(Provider.apns, CredentialKind.apns_token, pem, key_id="KEY1234567", team_id="TEAM123456",
               topic=MDM_TOPIC)  # fmt: skip

    with pytest.raises(InvalidCredential) as raised:
        credential_from_row(row)

    assert str(raised.value) == MDM_NEEDS_CERTIFICATE
    assert "MDM push certificate" in str(raised.value)
    assert "token-based" in str(raised.value)
    # The dispatch holds with "APNs credential refused: <this>", within the hold reason's 200 characters.
    assert len(f"APNs credential refused: {raised.value}") <= 200


@pytest.mark.parametrize(
    ("provider", "kind"),
    [
        (Provider.fcm, CredentialKind.aosp_api_key),
        (Provider.aosp, CredentialKind.fcm_service_account),
        (Provider.apns, CredentialKind.aosp_api_key),
        (Provider.fcm, CredentialKind.apns_certificate),
    ],
)
def test_a_row_of_another_providers_kind_is_refused(provider: Provider, kind: CredentialKind) -> None:
    with pytest.raises(
        InvalidCredential, match=f"a credential for {provider.value} is of kind .*not {kind.value}"
    ):
        credential_from_row(_row(provider, kind, "k" * 32))


def test_the_topic_is_the_certificates_subject_uid_whatever_the_row_says() -> None:
    """[A-SEND] the topic of an MDM push is the UID of the certificate's subject."""
    credential = credential_from_row(_certificate_row(MDM_TOPIC, row_topic="com.apple.mgmt.External.typo"))

    assert isinstance(credential, ApnsCertificate)
    assert credential.topic == MDM_TOPIC


@pytest.mark.parametrize(
    "topic",
    ["com.example.app", "com.apple.mgmt.", "com.apple.mgmtExternal.x", "com.apple.mgmt.External.a b",
     "com.apple.mgmt.External.\u200bx"],
)  # fmt: skip
def test_a_certificate_whose_topic_is_not_an_mdm_topic_is_refused(topic: str) -> None:
    """[A-MDMPUSH] MDM push certificates have a com.apple.mgmt. topic; anything else is not one."""
    with pytest.raises(InvalidCredential, match=r"not an MDM push certificate|non-printing") as raised:
        credential_from_row(_certificate_row(topic))
    assert topic not in str(raised.value).replace("com.apple.mgmt.*", ""), "the field, never the value"


def test_a_certificate_with_another_key_is_refused() -> None:
    other = private_pem(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(InvalidCredential, match="not the certificate's key"):
        credential_from_row(_certificate_row(MDM_TOPIC, key=other))


# The sandbox's, the demo's and the tests' project ids pass, with Google's limits: 6 and 30 characters.
GOOD_PROJECT_IDS = [FCM_PROJECT_ID, SANDBOX_PROJECT, "acme-mdm", "watch-project", "abcdef", "a" + "b" * 29]
BAD_PROJECT_IDS = [
    "short", "a" * 31, "Acme-mdm", "1acme-mdm", "acme-mdm-", "acme_mdm", "acme/../x", "acme%2fmdm",
    "acme mdm", "acme-mdm\n", "acme-\u00e9mdm",
]  # fmt: skip


@pytest.mark.parametrize("project_id", GOOD_PROJECT_IDS)
def test_a_google_cloud_project_id_passes(project_id: str) -> None:
    require_project_id(project_id)


@pytest.mark.parametrize("project_id", BAD_PROJECT_IDS)
def test_a_project_id_of_another_shape_never_reaches_the_url_path(project_id: str) -> None:
    """[F-SEND] the project id is a segment of the send URL's path; Google's shape keeps it one segment."""
    row = _service_account_row()
    row.project_id = project_id
    with pytest.raises(InvalidCredential, match="the project id") as raised:
        credential_from_row(row)
    assert project_id not in str(raised.value)


@pytest.mark.parametrize(
    "character", ["\x00", "\x07", "\t", "\n", "\x1f", "\x7f", "\u0085", "\u200b", "\u2028"]
)
def test_control_and_non_printing_characters_are_refused_naming_the_field(character: str) -> None:
    with pytest.raises(InvalidCredential, match=r"^the key id contains a control or non-printing character$"):
        require_printable("the key id", f"KEY{character}1234")
    require_printable("the key id", "KEY 1234-é")  # a space and a letter print
