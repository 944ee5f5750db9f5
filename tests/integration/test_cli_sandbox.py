"""`mdmq sandbox` serves the three emulators until stopped, and a client gets APNs' answer from it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from sandbox.testing import ALERT_BODY, alert_headers, connect, run


def _provider_token() -> str:
    """An ES256 provider token signed by a throw-away key: the open sandbox accepts any well-formed one."""
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode({"iss": "TEAM123456", "iat": int(time.time())}, key, "ES256", {"kid": "KEY1234567"})


def test_mdmq_sandbox_serves_until_sigterm() -> None:
    command = [sys.executable, "-c", "from cli.main import main; main()", "sandbox",
               "--apns-port", "0", "--apns-sandbox-port", "0", "--fcm-port", "0",
               "--aosp-port", "0"]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            urls = dict(process.stdout.readline().split() for _ in range(3))
            assert set(urls) == {"APNs", "FCM", "AOSP"}
            assert all(re.fullmatch(r"http://127\.0\.0\.1:\d+", url) for url in urls.values())
            statuses: list[int] = []

            async def push() -> None:
                client = await connect(urls["APNs"])
                # A provider token may send app notifications; MDM pushes need a certificate [A-MDMPUSH].
                response = await client.request(
                    "POST", f"/3/device/{'ab' * 32}", alert_headers(_provider_token()), ALERT_BODY
                )
                statuses.append(response.status)
                await client.close()

            run(push)
            assert statuses == [200]
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
