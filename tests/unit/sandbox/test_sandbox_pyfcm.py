"""pyfcm (FCM HTTP v1 over requests and google-auth, HTTP/1.1) against the FCM emulator, through real sockets.

pyfcm is pointed at the emulator by two things only: the service-account file's `token_uri` (google-auth
signs its assertion for that audience and posts it there) and `FCM_END_POINT_BASE`, the class attribute
pyfcm builds its send URL from, set on the instance.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pyfcm import FCMNotification  # type: ignore[import-untyped]
from pyfcm.errors import FCMNotRegisteredError, InvalidDataError  # type: ignore[import-untyped]

from sandbox import Delivery, Sandbox, SandboxThread, Storm
from sandbox.testing import FCM_TOKEN, PROJECT, World

CLIENT_EMAIL = "pyfcm@mdmq-test.iam.gserviceaccount.com"
DEAD_FCM_TOKEN = "unregistered-device-0001:APA91b" + "d" * 134  # the real shape [F-TOK]


def service_account_file(directory: Path, key: rsa.RSAPrivateKey, client_email: str, token_uri: str) -> Path:
    """A service-account key file as the Google Cloud console downloads it, for the emulator's token URL."""
    private_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    info = {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": private_key.decode("ascii"),
        "client_email": client_email,
        "client_id": "100000000000000000001",
        "token_uri": token_uri,
    }
    path = directory / f"{client_email.partition('@')[0]}.json"
    path.write_text(json.dumps(info))
    return path


def pyfcm_client(sandbox: Sandbox, key_file: Path) -> Any:
    fcm = FCMNotification(service_account_file=str(key_file))
    fcm.FCM_END_POINT_BASE = f"{sandbox.fcm_url}/v1/projects"
    return fcm


def close(fcm: Any) -> None:
    session = getattr(fcm.thread_local, "requests_session", None)
    if session is not None:
        session.close()


@pytest.fixture
def sandbox(world: World) -> Iterator[Sandbox]:
    world.registry.add_fcm_device(DEAD_FCM_TOKEN, project_id=PROJECT)
    world.registry.unregister(DEAD_FCM_TOKEN)
    with SandboxThread(world.registry) as running:
        yield running


@pytest.fixture
def fcm(sandbox: Sandbox, world: World, tmp_path: Path) -> Iterator[Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    world.registry.add_fcm_service_account(CLIENT_EMAIL, key.public_key(), project_id=PROJECT)
    client = pyfcm_client(
        sandbox, service_account_file(tmp_path, key, CLIENT_EMAIL, f"{sandbox.fcm_url}/token")
    )
    yield client
    close(client)


def test_pyfcm_sends_and_gets_the_message_name(fcm: Any, world: World) -> None:
    deliveries: list[Delivery] = []
    world.registry.subscribe(deliveries.append)
    answer = fcm.notify(fcm_token=FCM_TOKEN, data_payload={"wake": "1"}, timeout=5)
    name = answer["name"]
    assert name.startswith(f"projects/{PROJECT}/messages/0:")
    assert [(d.push_id, dict(d.payload)) for d in deliveries] == [(name.rsplit("/", 1)[1], {"wake": "1"})]
    # pyfcm's dry run is FCM's validate_only: checked, answered with FCM's placeholder id, not delivered.
    assert fcm.notify(fcm_token=FCM_TOKEN, data_payload={"x": "y"}, dry_run=True, timeout=5) == {
        "name": f"projects/{PROJECT}/messages/fake_message_id"
    }
    assert len(deliveries) == 1


def test_pyfcm_gets_unregistered_for_a_dead_token(fcm: Any) -> None:
    with pytest.raises(FCMNotRegisteredError):
        fcm.notify(fcm_token=DEAD_FCM_TOKEN, data_payload={"wake": "1"}, timeout=5)


def test_pyfcm_gets_invalid_argument_with_googles_error_body(fcm: Any) -> None:
    with pytest.raises(InvalidDataError) as raised:
        fcm.notify(fcm_token=FCM_TOKEN, data_payload={"wake": "1"}, android_config={"ttl": "soon"}, timeout=5)
    error = json.loads(str(raised.value))["error"]  # pyfcm passes the body on as the message
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    # Not a Duration: Google's parser refuses the field, a BadRequest violation [F-MSG]
    assert error["details"][0]["fieldViolations"][0]["field"] == "message.android.ttl"


def test_pyfcm_waits_out_quota_exceeded_as_retry_after_says(fcm: Any, sandbox: Sandbox) -> None:
    sandbox.fcm_faults.start_storm(Storm("QUOTA_EXCEEDED", retry_after_s=1, requests=1))
    started = time.monotonic()
    answer = fcm.notify(fcm_token=FCM_TOKEN, data_payload={"wake": "1"}, timeout=5)
    elapsed_s = time.monotonic() - started
    # The emulator answered 429 RESOURCE_EXHAUSTED with Retry-After: 1 once; the client (urllib3's retry,
    # which pyfcm configures for POST) slept that long and sent again.
    assert sandbox.fcm_faults.storm_active is False
    assert elapsed_s >= 1.0
    assert answer["name"].startswith(f"projects/{PROJECT}/messages/0:")


def test_pyfcm_fails_oauth_for_an_unknown_service_account(sandbox: Sandbox, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stranger = "stranger@mdmq-test.iam.gserviceaccount.com"
    fcm = pyfcm_client(sandbox, service_account_file(tmp_path, key, stranger, f"{sandbox.fcm_url}/token"))
    try:
        with pytest.raises(InvalidDataError, match="invalid_grant: Invalid grant: account not found"):
            fcm.notify(fcm_token=FCM_TOKEN, data_payload={"wake": "1"}, timeout=5)
    finally:
        close(fcm)
