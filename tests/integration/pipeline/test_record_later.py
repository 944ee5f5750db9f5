"""PostgreSQL refuses a dispatch's answers after its pushes went out: the answers go to the record-only
actor, which Dramatiq retries until the database is back and which writes them without pushing again."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import sqlalchemy as sa
from dramatiq.broker import MessageProxy
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, func, select

from config.settings import Settings
from models.enums import CredentialKind, Platform, Provider, PushEnvironment
from models.statuses import Kind, Status
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.tables import Deployment, PushReceipt
from sandbox import DeviceRegistry, SandboxThread
from sandbox.tls import issue_mdm_push_certificate, mdm_topic
from tests.helpers import sandbox_settings
from tests.services import POSTGRES_ADMIN_URL
from workers.actors import declare_actors
from workers.app import App
from workers.broker import URGENT_QUEUE
from workers.providers.base import PushResult
from workers.push_gateway import Batch, PushGateway
from workers.services.credentials import store_credential

ORG = "acme"


class Database:
    """The test's database, refused and allowed again as a server going down and coming back is: every
    connection to it is cut and no new one is accepted until `allow`."""

    def __init__(self, url: str) -> None:
        self.name = make_url(url).database
        self.admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")

    def refuse(self) -> None:
        with self.admin.connect() as c:
            c.execute(sa.text(f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS false'))
            c.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": self.name},
            )

    def allow(self) -> None:
        with self.admin.connect() as c:
            c.execute(sa.text(f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS true'))


class DownAfterSending(PushGateway):
    """The real gateway; once the pushes are answered, the database goes down."""

    def __init__(self, *args: Any, after: Callable[[], None]) -> None:
        super().__init__(*args)
        self.after = after

    def send_all(self, batches: Sequence[Batch]) -> list[list[PushResult] | Exception]:
        results = super().send_all(batches)
        self.after()
        return results


class DownApp(App):
    def __init__(self, settings: Settings, database: Database) -> None:
        super().__init__(settings)
        self.database = database

    @cached_property
    def gateway(self) -> PushGateway:
        return DownAfterSending(self.endpoints, after=self.database.refuse)


class BackAfterRefusals(dramatiq.Middleware):
    """Counts each actor's messages and failures, and brings the database back once the record-only actor
    has been refused `refusals` times."""

    def __init__(self, database: Database, refusals: int) -> None:
        self.database, self.refusals = database, refusals
        self.processed: list[tuple[str, str | None]] = []

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self.processed.append((message.actor_name, type(exception).__name__ if exception else None))
        failed = [name for name, error in self.processed if name == "record_dispatch" and error]
        if message.actor_name == "record_dispatch" and exception is not None and len(failed) == self.refusals:
            self.database.allow()


@pytest.fixture
def database(postgres_url: str) -> Iterator[Database]:
    database = Database(postgres_url)
    try:
        yield database
    finally:
        database.allow()
        database.admin.dispose()


def test_refused_answers_reach_the_record_only_actor_and_are_written_once_back(
    pg: Engine, postgres_url: str, database: Database, tmp_path: Path
) -> None:
    registry = DeviceRegistry()
    certificate = issue_mdm_push_certificate(registry, topic=mdm_topic(), days=365)
    tokens = [secrets.token_hex(32) for _ in range(3)]
    for token in tokens:
        registry.add_apns_device(token, topic=certificate.topic)
    deliveries: list[str] = []
    registry.subscribe(lambda delivery: deliveries.append(delivery.token))

    with SandboxThread(registry, tls=True) as sandbox:
        settings = sandbox_settings(sandbox, tmp_path, database_url=postgres_url, broker_url="stub://")
        app = DownApp(settings, database)
        with app.session() as s:
            ensure_organization(s, organization_id=ORG)
            store_credential(
                s,
                organization_id=ORG,
                provider=Provider.apns,
                kind=CredentialKind.apns_certificate,
                secret=certificate.pem_bundle,
                environment=PushEnvironment.production,
            )
            devices = add_devices(
                s,
                organization_id=ORG,
                devices=[NewDevice(Platform.ios, t, push_magic=f"magic-{i}") for i, t in enumerate(tokens)],
            )
            ids = create_deployments(
                s, organization_id=ORG, deployments=[NewDeployment(d, Kind.profile) for d in devices]
            )
        back = BackAfterRefusals(database, refusals=2)
        app.broker.add_middleware(back)
        actors = declare_actors(app)
        worker = dramatiq.Worker(app.broker, worker_threads=1, worker_timeout=100)
        worker.start()
        try:
            actors.dispatch_bulk.send(ids)
            app.broker.join("bulk", timeout=60_000)
            app.broker.join(URGENT_QUEUE, timeout=60_000)
        finally:
            worker.stop()
            app.close()

    assert back.processed == [
        ("dispatch_bulk", None),  # its pushes out, the answers refused: handed on, not failed
        ("record_dispatch", "Retry"),  # the database still away: retried, with one line logged
        ("record_dispatch", "Retry"),
        ("record_dispatch", None),  # the database back: written
    ]
    assert sorted(deliveries) == sorted(tokens), "each device pushed once"
    with Session(pg) as s:
        deployments = list(s.exec(select(Deployment)))
        receipts = s.exec(select(func.count()).select_from(PushReceipt)).one()
    assert {d.status for d in deployments} == {Status.queued}
    assert {d.attempt_count for d in deployments} == {1}
    assert all(d.receipt_id is not None for d in deployments), "the answers are recorded"
    assert receipts == 3
