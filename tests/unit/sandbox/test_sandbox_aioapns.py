"""Fidelity: an independent APNs client library (aioapns) gets from the emulator what APNs would answer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from sandbox import Sandbox
from sandbox.testing import APNS_TOKEN, DEAD_TOKEN, KEY_ID, TEAM_ID, TOPIC, World
from sandbox.tls import ServerTls

aioapns = pytest.importorskip("aioapns")
from aioapns.common import NotificationRequest, NotificationResult, PushType  # noqa: E402
from aioapns.connection import APNsBaseClientProtocol, APNsKeyConnectionPool  # noqa: E402


class LoopbackKeyPool(APNsKeyConnectionPool):
    """aioapns' own token-auth pool, dialling the emulator instead of Apple (same TLS name, SNI and ALPN)."""

    def __init__(self, port: int, **options: Any) -> None:
        super().__init__(**options)
        self.port = port

    async def _create_connection(self, apns_protocol_factory: Callable[[], Any]) -> APNsBaseClientProtocol:
        _, protocol = await self.loop.create_connection(
            apns_protocol_factory,
            "127.0.0.1",
            self.port,
            ssl=self.ssl_context,
            server_hostname=self.protocol_class.APNS_SERVER,
        )
        assert isinstance(protocol, APNsBaseClientProtocol)
        return protocol


def send_with_aioapns(world: World, token: str, *, advance_clock_s: float = 0) -> NotificationResult:
    tls = ServerTls.generate()
    key_pem = world.apns_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()

    async def scenario() -> NotificationResult:
        async with Sandbox(world.registry, tls=tls) as sandbox:
            world.clock.advance(advance_clock_s)
            pool = LoopbackKeyPool(
                sandbox.ports["apns"],
                key=key_pem,
                key_id=KEY_ID,
                team_id=TEAM_ID,
                topic=TOPIC,
                use_sandbox=True,
                ssl_context=tls.client_context(),
                max_connection_attempts=1,
            )
            request = NotificationRequest(
                device_token=token,
                # Token auth may send app notifications, never MDM pushes [A-MDMPUSH].
                message={"aps": {"alert": "hello"}},
                notification_id=str(uuid.uuid4()),
                push_type=PushType.ALERT,
                priority=10,
            )
            try:
                return await asyncio.wait_for(pool.send_notification(request), 10)
            finally:
                pool.close()

    return asyncio.run(scenario())


def test_success(world: World) -> None:
    result = send_with_aioapns(world, APNS_TOKEN)
    assert result.is_successful
    assert result.status == "200"


def test_bad_device_token(world: World) -> None:
    result = send_with_aioapns(world, "00" * 31 + "0")
    assert (result.status, result.description) == ("400", "BadDeviceToken")


def test_unregistered_with_timestamp(world: World) -> None:
    result = send_with_aioapns(world, DEAD_TOKEN)
    assert (result.status, result.description, result.timestamp) == ("410", "Unregistered", 1_700_000_000_500)


def test_expired_provider_token(world: World) -> None:
    result = send_with_aioapns(world, APNS_TOKEN, advance_clock_s=3601)
    assert (result.status, result.description) == ("403", "ExpiredProviderToken")
