"""Keys bounded before any costly check: RSA 2048-4096 bits and EC P-256 only, each refusal in words that
name the size or curve and never the key; the costly check remembered by the key, not its PEM text."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from tests.integration.security.keys import RSA_8192_TEST_ONLY, pem
from workers.providers.credentials import FcmServiceAccount, InvalidCredential
from workers.providers.keys import bound_problem, read_private_key
from workers.services.key_checks import KeyChecks

TOO_SMALL = "is a 1024-bit RSA key: at least 2048 bits are taken"
TOO_LARGE = "is a 8192-bit RSA key: at most 4096 bits are taken"
OTHER_CURVE = "is an EC key on secp384r1: only P-256 (secp256r1) is taken"
OTHER_KIND = "is neither an RSA nor an EC P-256 key"


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        pytest.param(lambda: rsa.generate_private_key(65537, 2048), None, id="rsa-2048"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP256R1()), None, id="p256"),
        pytest.param(lambda: rsa.generate_private_key(65537, 1024), TOO_SMALL, id="rsa-1024"),
        pytest.param(lambda: read_private_key(RSA_8192_TEST_ONLY.read_text()), TOO_LARGE, id="rsa-8192"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), OTHER_CURVE, id="p384"),
        pytest.param(ed25519.Ed25519PrivateKey.generate, OTHER_KIND, id="ed25519"),
    ],
)
def test_a_key_is_bounded_by_kind_and_size(make: Callable[[], PrivateKeyTypes], problem: str | None) -> None:
    assert bound_problem(make()) == problem


def test_an_8192_bit_key_is_read_without_its_costly_check() -> None:
    """The refusal comes from the size read off the key; a full check of it would take seconds."""
    with pytest.raises(InvalidCredential, match="private_key is a 8192-bit RSA key"):
        FcmServiceAccount(client_email="push@acme.example", private_key_pem=RSA_8192_TEST_ONLY.read_text(),
                          project_id="acme-mdm")  # fmt: skip


def test_the_costly_check_is_remembered_by_the_key_not_its_text() -> None:
    checks = KeyChecks()  # in this thread
    key_pem = pem(rsa.generate_private_key(65537, 2048))
    for layout in (key_pem, key_pem.replace("\n", "\r\n"), f"  {key_pem}\n\n"):
        secret = json.dumps({"client_email": "push@acme.example", "private_key": layout})
        checks.require_consistent(FcmServiceAccount.from_json(secret, project_id="acme-mdm", check_key=False))

    assert (checks.checked, checks.remembered) == (1, 2)
