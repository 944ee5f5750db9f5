"""Push-status polling on PostgreSQL with the AOSP emulator: a push with a device offline stays pending, the
device comes online, the next poll finds it delivered; a delivered receipt is polled no more. A push the
service no longer tracks (INVALID_PUSH_ID [P-STAT]) is judged by its stored expiry, never as a failure."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from config.settings import Settings
from models.enums import CredentialKind, Platform, Provider
from models.statuses import Kind, Status
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.store.receipts import record_untracked
from models.tables import Deployment, PushReceipt
from models.types import utcnow
from sandbox import DeviceRegistry, Sandbox, SandboxThread
from scheduler import jobs
from workers.actors import Actors, declare_actors
from workers.app import App
from workers.services.credentials import store_credential
from workers.services.dispatch import dispatch_chunk

API_KEY = secrets.token_hex(16)


@pytest.fixture
def registry() -> DeviceRegistry:
    registry = DeviceRegistry()
    registry.add_aosp_api_key(API_KEY)
    return registry


@pytest.fixture
def sandbox(registry: DeviceRegistry) -> Iterator[Sandbox]:
    with SandboxThread(registry) as sandbox:
        yield sandbox


@pytest.fixture
def actors(pg: Engine, postgres_url: str, sandbox: Sandbox) -> Iterator[Actors]:
    app = App(
        Settings(
            database_url=postgres_url, broker_url="stub://", aosp_url=sandbox.aosp_url, poll_interval_s=60
        )
    )
    yield declare_actors(app)
    app.close()


def dispatch_to(actors: Actors, tokens: list[str]) -> list[str]:
    """Deployments of acme to AOSP devices of `tokens`, dispatched: one push, one receipt."""
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
            s, organization_id="acme", devices=[NewDevice(Platform.aosp, t) for t in tokens]
        )
        ids = create_deployments(
            s,
            organization_id="acme",
            deployments=[NewDeployment(d, Kind.message, {"text": "hi"}) for d in devices],
        )
    summary = dispatch_chunk(app.session, app.gateway, ids, policy=app.policy)
    assert summary.accepted == len(tokens)
    return ids


def test_a_pending_push_is_polled_until_its_device_comes_online(
    pg: Engine, registry: DeviceRegistry, actors: Actors
) -> None:
    online, offline = secrets.token_hex(11), secrets.token_hex(11)
    registry.add_aosp_device(online)
    registry.add_aosp_device(offline, online=False)
    dispatch_to(actors, [online, offline])

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


def test_a_push_no_longer_tracked_before_its_expiry_is_polled_no_more_and_fails_nothing(
    pg: Engine, registry: DeviceRegistry, sandbox: Sandbox, actors: Actors
) -> None:
    offline = secrets.token_hex(11)
    registry.add_aosp_device(offline, online=False)
    ids = dispatch_to(actors, [offline])
    with Session(pg) as s:
        (receipt,) = s.exec(select(PushReceipt))
    assert receipt.provider_push_id is not None
    now = utcnow()
    assert jobs.poll_receipts_job(actors, now) == 1
    # [P-STAT] the service stops tracking it: expired early, or (older documents) delivered to all
    sandbox.aosp.forget(receipt.provider_push_id)
    later = now + timedelta(minutes=1)
    assert jobs.poll_receipts_job(actors, later) == 1
    with Session(pg) as s:
        (receipt,) = s.exec(select(PushReceipt))
        statuses = {d.status for d in s.exec(select(Deployment).where(col(Deployment.id).in_(ids)))}
    assert receipt.expires_at is not None
    assert receipt.expires_at > later, "not past its stored expiry"
    assert (receipt.untracked_at, receipt.delivered, receipt.pending_devices) == (later, None, None)
    assert statuses == {Status.queued.value}, "no failure of the deployment"
    assert jobs.poll_receipts_job(actors, later + timedelta(minutes=5)) == 0, "untracked: polled no more"


def test_a_push_no_longer_tracked_past_its_expiry_is_an_expired_push(pg: Engine, actors: Actors) -> None:
    sent = utcnow() - timedelta(hours=2)
    with actors.app.session() as s:
        ensure_organization(s, organization_id="acme")
        receipt = PushReceipt(
            organization_id="acme",
            provider=Provider.aosp,
            provider_push_id="gone",
            sent_at=sent,
            expires_at=sent + timedelta(hours=1),
            delivered=False,
            pending_devices=1,
        )
        s.add(receipt)
        s.flush()
        receipt_id = receipt.id
    assert receipt_id is not None
    now = utcnow()
    with actors.app.session() as s:
        record_untracked(s, receipt_id=receipt_id, now=now)
    with Session(pg) as s:
        stored = s.get(PushReceipt, receipt_id)
    assert stored is not None
    # Past its stored expiry: an expired push like any other, its last figures kept, not polled again.
    assert (stored.untracked_at, stored.delivered, stored.pending_devices) == (None, False, 1)
    assert stored.last_polled_at == now
    assert jobs.poll_receipts_job(actors, now) == 0
