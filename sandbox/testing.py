"""Helpers for tests against the sandbox: fixed identities, a fake clock, credential minting, a live runner.

Used by the sandbox's own tests; provider-client tests may use them too (`World.apns_jwt`,
`World.google_assertion`, `FakeClock`, `in_sandbox`, `connect_with_certificate`).

MDM pushes go only over a push certificate (TLS) [A-MDMPUSH]: `mdm_headers()` without a provider token,
on a connection from `connect_with_certificate`. A provider token (JWT) may send app notifications:
`alert_headers(world.apns_jwt())`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sandbox import DeviceRegistry, Sandbox
from sandbox.h2client import ClientResponse, H2Client
from sandbox.tls import Issued, ServerTls

TEAM_ID = "TEAM123456"
KEY_ID = "KEY1234567"
TOPIC = "com.apple.mgmt.External.0b7f3b9e"
PROJECT = "mdmq-test"
SA_EMAIL = "pusher@mdmq-test.iam.gserviceaccount.com"
AOSP_KEY = "0123456789abcdef"
APNS_TOKEN = "ab" * 32
OFFLINE_TOKEN = "cd" * 32
DEAD_TOKEN = "ef" * 32
OTHER_TOPIC_TOKEN = "12" * 32
FCM_TOKEN = "cHVzaC10b2tlbi0wMDAwMDE:APA91b" + "x" * 134  # a made-up token of the real shape
AOSP_TOKEN = "aosp0000000000000000001"  # noqa: S105 (a made-up device token)
AOSP_OFFLINE = "aosp0000000000000000002"


class FakeClock:
    """Unix seconds the test moves by hand, so that expiry needs no sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class World:
    registry: DeviceRegistry
    clock: FakeClock
    apns_key: ec.EllipticCurvePrivateKey
    sa_key: rsa.RSAPrivateKey
    _tokens: dict[tuple[str, str, int, int], str] = field(default_factory=dict)

    def apns_jwt(
        self, *, iat: float | None = None, kid: str = KEY_ID, team: str = TEAM_ID, key: Any = None
    ) -> str:
        issued_at = int(self.clock() if iat is None else iat)
        claims = {"iss": team, "iat": issued_at}
        cache_key = (team, kid, issued_at, id(key))
        # ES256 signatures are randomised: a client reuses its token, or APNs sees "updates" on each push.
        if cache_key not in self._tokens:
            self._tokens[cache_key] = jwt.encode(
                claims, key or self.apns_key, algorithm="ES256", headers={"kid": kid}
            )
        return self._tokens[cache_key]

    def google_assertion(
        self, *, aud: str = "https://oauth2.googleapis.com/token", key: Any = None, **overrides: Any
    ) -> str:
        now = int(self.clock())
        claims = {
            "iss": SA_EMAIL,
            "scope": "https://www.googleapis.com/auth/firebase.messaging",
            "aud": aud,
            "iat": now,
            "exp": now + 3600,
            **overrides,
        }
        return jwt.encode(claims, key or self.sa_key, algorithm="RS256")


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


async def connect(url: str) -> H2Client:
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    return await H2Client.connect(host, int(port))


async def connect_with_certificate(url: str, tls: ServerTls, certificate: Issued | None) -> H2Client:
    """A TLS connection to an emulator of `url`, presenting `certificate` (None: no client certificate)."""
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    context = tls.client_context(certificate)
    return await H2Client.connect(host, int(port), ssl_context=context, server_hostname="localhost")


def mdm_headers(token: str | None = None, **extra: str) -> list[tuple[str, str]]:
    """An MDM wake-up's headers; with `token`, authorized by that provider token (which APNs refuses)."""
    return _headers("mdm", token, extra)


def alert_headers(token: str, **extra: str) -> list[tuple[str, str]]:
    """An app notification's headers, authorized by a provider token: what a JWT may push [A-JWT]."""
    return _headers("alert", token, extra)


def _headers(push_type: str, token: str | None, extra: dict[str, str]) -> list[tuple[str, str]]:
    headers = {
        "authorization": f"bearer {token}" if token is not None else "",
        "apns-topic": TOPIC,
        "apns-push-type": push_type,
        "apns-priority": "10",
        "apns-id": str(uuid.uuid4()),
    }
    headers.update({k.replace("_", "-"): v for k, v in extra.items()})
    return [(k, v) for k, v in headers.items() if v != ""]


MDM_BODY = json.dumps({"mdm": "00000000-1111-2222-3333-444444444444"}).encode()
ALERT_BODY = json.dumps({"aps": {"alert": "hello"}}).encode()


def reason(response: ClientResponse) -> str | None:
    if not response.body:
        return None
    value = json.loads(response.body).get("reason")
    return str(value) if value is not None else None


def in_sandbox(world: World, **options: Any) -> Callable[[Callable[[Sandbox], Awaitable[None]]], None]:
    """Run `body(sandbox)` inside a live Sandbox for `world`, on a fresh event loop."""

    def runner(body: Callable[[Sandbox], Awaitable[None]]) -> None:
        async def scenario() -> None:
            async with Sandbox(world.registry, **options) as sandbox:
                await body(sandbox)

        asyncio.run(scenario())

    return runner
