"""Credential uploads cannot stall the API: an RSA key over 4096 bits or an EC key on another curve than
P-256 is a 400 before any costly check, the costly check of an RSA key runs in a pool of processes once
per key (whatever its PEM layout), and `/healthz` answers while heavy uploads run."""

from __future__ import annotations

import datetime as dt
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID

from models.store import ensure_organization
from models.store.tokens import create_token
from sandbox.tls import make_ca, mdm_topic
from tests.helpers import wait_until
from tests.integration.api.conftest import Client
from tests.integration.security.keys import RSA_8192_TEST_ONLY, pem
from tests.integration.security.load import PROJECT_ID, UploadLoad, service_account
from workers.app import App

BASE = "/v1/organizations/acme/credentials"
HEALTHZ_BOUND_S = 0.5  # the bound the issue names for /healthz while uploads run
BUSY = "valid 503 5003 Retry-After: 5"  # beyond the pool and its queue: come back in 5 s


@pytest.fixture
def token(mdmq: App) -> str:
    with mdmq.session() as s:
        ensure_organization(s, organization_id="acme")
        return create_token(s, organization_id="acme", permissions=["mdm.credential.manage"])[1]


@pytest.fixture(scope="module")
def rsa_8192() -> rsa.RSAPrivateKey:
    key = load_pem_private_key(RSA_8192_TEST_ONLY.read_bytes(), None, unsafe_skip_rsa_key_validation=True)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def push_certificate(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """An MDM push certificate (the topic in the subject's UID) for `key`, with `key`: one PEM text."""
    ca = make_ca()
    subject = x509.Name([x509.NameAttribute(NameOID.USER_ID, mdm_topic())])
    now = dt.datetime.now(dt.UTC)
    certificate = x509.CertificateBuilder(
        subject, ca.certificate.subject, key.public_key(), x509.random_serial_number(),
        now - dt.timedelta(days=1), now + dt.timedelta(days=365),
    ).sign(ca.key, hashes.SHA256())  # fmt: skip
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    return {"kind": "apns_certificate", "secret": cert_pem + pem(key)}


def put(client: Client, token: str, provider: str, body: dict[str, Any]) -> requests.Response:
    return client.http.put(f"{client.base_url}{BASE}/{provider}", json=body,
                           headers={"Authorization": f"Bearer {token}"}, timeout=60)  # fmt: skip


def listed(client: Client, token: str) -> list[dict[str, Any]]:
    answer = client.get(BASE, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["data"])


def error(response: requests.Response) -> tuple[int, int, str]:
    body = response.json()
    return response.status_code, body["error"]["code"], body["error"]["message"]


@pytest.mark.parametrize(("provider", "named"), [("fcm", "private_key"), ("apns", "private_key_pem")])
def test_an_rsa_key_over_4096_bits_is_refused_before_its_costly_check(
    client: Client, mdmq: App, token: str, rsa_8192: rsa.RSAPrivateKey, provider: str, named: str
) -> None:
    body = service_account(pem(rsa_8192)) if provider == "fcm" else push_certificate(rsa_8192)

    code, number, message = error(put(client, token, provider, body))

    assert (code, number) == (400, 4000)
    assert message == f"Invalid request: {named} is a 8192-bit RSA key: at most 4096 bits are taken"
    assert mdmq.key_checks.checked == 0, "refused before the costly check"
    assert listed(client, token) == [], "nothing stored"


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1(), ec.SECP256K1()], ids=lambda c: c.name)
def test_a_push_certificate_key_on_another_curve_than_p256_is_refused(
    client: Client, token: str, curve: ec.EllipticCurve
) -> None:
    body = push_certificate(ec.generate_private_key(curve))

    code, number, message = error(put(client, token, "apns", body))

    assert (code, number) == (400, 4000)
    assert message == (
        f"Invalid request: private_key_pem is an EC key on {curve.name}: only P-256 (secp256r1) is taken"
    )
    assert listed(client, token) == []


def test_a_service_account_with_an_ec_key_is_refused(client: Client, token: str) -> None:
    body = service_account(pem(ec.generate_private_key(ec.SECP256R1())))

    code, number, message = error(put(client, token, "fcm", body))

    assert (code, number, message) == (400, 4000, "Invalid request: private_key is not an RSA key")


def test_a_key_that_differs_only_in_whitespace_is_checked_once(client: Client, mdmq: App, token: str) -> None:
    key_pem = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    layouts = [key_pem, key_pem.replace("\n", "\r\n"), "\n  " + key_pem.replace("\n", "\n ") + "\n\n"]

    answers = [put(client, token, "fcm", service_account(layout)) for layout in layouts]

    assert [a.status_code for a in answers] == [200, 200, 200], answers[-1].text
    assert (mdmq.key_checks.checked, mdmq.key_checks.remembered) == (1, 2)
    assert len(listed(client, token)) == 1


def test_an_inconsistent_key_is_refused_by_the_pool_and_nothing_is_stored(
    client: Client, mdmq: App, token: str
) -> None:
    good = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    broken = rsa.RSAPrivateNumbers(
        good.p, good.q, good.d + 2, good.dmp1, good.dmq1, good.iqmp, good.public_numbers
    ).private_key(unsafe_skip_rsa_key_validation=True)

    code, number, message = error(put(client, token, "fcm", service_account(pem(broken))))

    assert (code, number) == (400, 4000)
    assert "private_key is not a consistent RSA key" in message
    assert mdmq.key_checks.checked == 1
    assert listed(client, token) == []


def test_healthz_answers_while_heavy_keys_upload(client: Client, mdmq: App, token: str) -> None:
    """Six clients, each alternating an 8192-bit key and a distinct 4096-bit one (a costly check every
    time: none is remembered), while /healthz is asked again and again until the pool has checked 4."""
    url = f"{client.base_url}{BASE}/fcm"
    with UploadLoad(url, token, clients=6) as load:
        waits = _healthz_waits(client, until=lambda: mdmq.key_checks.checked >= 4)

    p99 = statistics.quantiles(waits, n=100, method="inclusive")[98]
    assert p99 <= HEALTHZ_BOUND_S, f"/healthz p99 {p99:.3f} s (the slowest {max(waits):.3f} s)"
    assert load.outcomes["oversized 400"] > 0, load.outcomes
    assert load.outcomes["valid 200"] > 0, load.outcomes
    assert set(load.outcomes) <= {"oversized 400", "valid 200", BUSY}, load.outcomes


def test_an_upload_beyond_the_pool_and_its_queue_is_a_503_with_retry_after(
    client: Client, mdmq: App, token: str
) -> None:
    """24 clients at once, nearly all of them in an upload of a fresh 4096-bit key (the oversized ones are
    answered at once) where the pool (1 process) and its queue (8) take 9."""
    url = f"{client.base_url}{BASE}/fcm"
    with UploadLoad(url, token, clients=24) as load:
        wait_until(lambda: mdmq.key_checks.checked >= 2, 300, "the pool to check two keys")

    assert load.outcomes[BUSY] > 0, load.outcomes
    assert set(load.outcomes) <= {"oversized 400", "valid 200", BUSY}, load.outcomes
    assert [c["projectId"] for c in listed(client, token)] == [PROJECT_ID], "the last accepted upload"


def _healthz_waits(client: Client, *, until: Callable[[], bool], limit_s: float = 300) -> list[float]:
    """How long each /healthz took, asked one after another until `until()` (and 20 times at least)."""
    waits: list[float] = []
    deadline = time.monotonic() + limit_s
    with requests.Session() as http:
        while not until() or len(waits) < 20:
            assert time.monotonic() < deadline, "the uploads never reached the key checks"
            started = time.perf_counter()
            answer = http.get(f"{client.base_url}/healthz", timeout=30)
            waits.append(time.perf_counter() - started)
            assert answer.status_code == 200
    return waits
