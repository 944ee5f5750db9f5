"""Private keys as credentials carry them: read without the costly check, bounded in kind and size before
any, and the costly check of an RSA key as a pure function that a process pool can run."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

# The costly check of an RSA key (its primes against its modulus) grows with the cube of its size or
# worse: ~0.5 s of CPU for 4096 bits, ~3-9 s for 8192. Google's service-account keys and Apple's push
# certificates are 2048-bit; a larger key buys a push credential nothing.
MAX_RSA_BITS = 4096
MIN_RSA_BITS = 2048
# [A-JWT] ES256: the curve of Apple's .p8 keys, and the one EC curve a push certificate's key may use.
P256 = "secp256r1"


def read_private_key(pem: str) -> PrivateKeyTypes:
    """The key of an unencrypted PEM text, loaded without an RSA key's consistency check (microseconds
    whatever its size). `ValueError` when it is not one."""
    try:
        return serialization.load_pem_private_key(
            pem.encode(), password=None, unsafe_skip_rsa_key_validation=True
        )
    except (ValueError, TypeError, UnicodeEncodeError):
        raise ValueError("not an unencrypted PEM private key") from None


def bound_problem(key: PrivateKeyTypes) -> str | None:
    """Why mdmq takes no credential with `key` (an RSA key outside 2048-4096 bits, an EC key on another
    curve than P-256, any other kind), or None: words to follow the key's name, never the key."""
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size > MAX_RSA_BITS:
            return f"is a {key.key_size}-bit RSA key: at most {MAX_RSA_BITS} bits are taken"
        if key.key_size < MIN_RSA_BITS:
            return f"is a {key.key_size}-bit RSA key: at least {MIN_RSA_BITS} bits are taken"
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name == P256:
            return None
        return f"is an EC key on {key.curve.name}: only P-256 (secp256r1) is taken"
    return "is neither an RSA nor an EC P-256 key"


def key_der(key: PrivateKeyTypes) -> bytes:
    """The key's PKCS#8 DER: one encoding of the key whatever its PEM looked like (line breaks, spaces,
    PKCS#1 or PKCS#8)."""
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def key_digest(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def rsa_key_consistent(der: bytes) -> bool:
    """The costly check: whether the RSA key of PKCS#8 `der` is consistent (its primes are primes whose
    product is its modulus, its exponents match). Pure, and picklable by name, for a process pool."""
    try:
        serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError):
        return False
    return True
