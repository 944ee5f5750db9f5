"""Keys for the upload tests and benchmark: an 8192-bit RSA key committed as a file (TEST ONLY: it guards
nothing, and generating one takes most of a minute), and many distinct valid RSA keys made cheaply."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

RSA_8192_TEST_ONLY = Path(__file__).with_name("rsa-8192-test-only.pem")


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def rsa_key_variants(key: rsa.RSAPrivateKey) -> Iterator[str]:
    """Endless distinct, consistent RSA keys on `key`'s primes, each with another public exponent: as
    costly to check as `key`, but made in microseconds where generating one takes seconds."""
    numbers = key.private_numbers()
    p, q = numbers.p, numbers.q
    phi = (p - 1) * (q - 1)
    exponent = 65537
    while True:
        exponent += 2
        if math.gcd(exponent, phi) != 1:
            continue
        d = pow(exponent, -1, phi)
        variant = rsa.RSAPrivateNumbers(
            p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
            rsa.RSAPublicNumbers(exponent, p * q),
        )  # fmt: skip
        yield pem(variant.private_key(unsafe_skip_rsa_key_validation=True))
