"""Push-status polling on PostgreSQL with the AOSP emulator: a push with a device offline stays pending, the
device comes online, the next poll finds it delivered; a delivered receipt is polled no more."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from config.app import App
from config.settings import Settings
from models.enums import CredentialKind, Platform, Provider
from models.statuses import Kind
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.tables import PushReceipt
from models.types import utcnow
from sandbox import DeviceRegistry, SandboxThread
from scheduler import jobs
from workers.actors import Actors, declare_actors
from workers.services.credentials import store_credential
from workers.services.dispatch import dispatch_chunk

API_KEY = secrets.token_hex(16)


@pytest.fixture
def registry() -> DeviceRegistry:
    registry = DeviceRegistry()
    registry.add_aosp_api_key(API_KEY)
    return registry


@pytest.fixture
def actors(pg: Engine, postgres_url: str, registry: DeviceRegistry) -> Iterator[Actors]:
    with SandboxThread(registry) as sandbox:
        app = App(
            Settings(
                database_url=postgres_url, broker_url="stub://", aosp_url=sandbox.aosp_url, poll_interval_s=60
            )
        )
        yield declare_actors(app)
        app.close()


def test_a_pending_push_is_polled_until_its_device_comes_online(
    pg: Engine, registry: DeviceRegistry, actors: Actors
) -> None:
    online, offline = secrets.token_hex(11), secrets.token_hex(11)
    registry.add_aosp_device(online)
    registry.add_aosp_device(offline, online=False)
    app = actors.app
    with app.session() as s:
        ensure_organization(s, organization_id="acme")
        store_credential(
            s,
            organization_id="acme",
            provider=Provider.aosp,
            kind=CredentialKind.aosp_api_key,
            secret=API_KEY,
        )
        devices = add_devices(
            s,
            organization_id="acme",
            devices=[NewDevice(Platform.aosp, online), NewDevice(Platform.aosp, offline)],
        )
        ids = create_deployments(
            s,
            organization_id="acme",
            deployments=[NewDeployment(d, Kind.message, {"text": "hi"}) for d in devices],
        )
    summary = dispatch_chunk(app.session, app.gateway, ids, policy=app.policy)
    assert summary.accepted == 2

    now = utcnow()
    assert jobs.poll_receipts_job(actors, now) >= 1
    with Session(pg) as s:
        receipts = list(s.exec(select(PushReceipt)))
    assert sum(r.pending_devices or 0 for r in receipts) == 1, "the offline device's push is pending"
    assert [r.delivered for r in receipts if r.pending_devices] == [False]
    assert all(r.last_polled_at == now for r in receipts)
    assert jobs.poll_receipts_job(actors, now + timedelta(seconds=1)) == 0, "polled just now: not again yet"

    registry.come_online(offline)
    later = now + timedelta(minutes=1)
    jobs.poll_receipts_job(actors, later)
    with Session(pg) as s:
        receipts = list(s.exec(select(PushReceipt)))
    assert {(r.delivered, r.pending_devices) for r in receipts} == {(True, 0)}
    assert jobs.poll_receipts_job(actors, later + timedelta(minutes=5)) == 0, "delivered: polled no more"


def test_receipts_that_cannot_be_polled_are_stamped_and_do_not_starve_the_others(
    pg: Engine, actors: Actors
) -> None:
    with actors.app.session() as s:
        ensure_organization(s, organization_id="nokey")  # no AOSP credential at all
        for n in range(3):
            s.add(PushReceipt(organization_id="nokey", provider=Provider.aosp, provider_push_id=f"push-{n}"))
    now = utcnow()

    assert jobs.poll_receipts_job(actors, now) == 3
    with Session(pg) as s:
        stamped = {r.last_polled_at for r in s.exec(select(PushReceipt))}
    assert stamped == {now}, "taken, stamped, and behind every receipt not polled yet"
    assert jobs.poll_receipts_job(actors, now + timedelta(seconds=1)) == 0
