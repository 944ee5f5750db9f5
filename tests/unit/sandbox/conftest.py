"""Fixtures for the sandbox tests: generated keys and a registry populated with one device of each kind."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sandbox import DeviceRegistry
from sandbox.testing import (
    AOSP_KEY,
    AOSP_OFFLINE,
    AOSP_TOKEN,
    APNS_TOKEN,
    DEAD_TOKEN,
    FCM_TOKEN,
    KEY_ID,
    OFFLINE_TOKEN,
    OTHER_TOPIC_TOKEN,
    PROJECT,
    SA_EMAIL,
    TEAM_ID,
    TOPIC,
    FakeClock,
    World,
)


@pytest.fixture(scope="session")
def apns_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def sa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def world(apns_key: ec.EllipticCurvePrivateKey, sa_key: rsa.RSAPrivateKey) -> World:
    clock = FakeClock()
    registry = DeviceRegistry(clock=clock)
    registry.add_apns_key(team_id=TEAM_ID, key_id=KEY_ID, public_key=apns_key.public_key())
    registry.add_apns_device(APNS_TOKEN, topic=TOPIC)
    registry.add_apns_device(OFFLINE_TOKEN, topic=TOPIC, online=False)
    registry.add_apns_device(DEAD_TOKEN, topic=TOPIC)
    registry.unregister(DEAD_TOKEN, at=1_700_000_000.5)
    registry.add_apns_device(OTHER_TOPIC_TOKEN, topic="com.example.other")
    registry.add_fcm_service_account(SA_EMAIL, sa_key.public_key(), project_id=PROJECT)
    registry.add_fcm_device(FCM_TOKEN, project_id=PROJECT)
    registry.add_aosp_api_key(AOSP_KEY)
    registry.add_aosp_device(AOSP_TOKEN)
    registry.add_aosp_device(AOSP_OFFLINE, online=False)
    return World(registry, clock, apns_key, sa_key)
