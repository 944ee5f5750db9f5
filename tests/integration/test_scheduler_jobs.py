"""The scheduler's jobs on SQLite and PostgreSQL: each pages through its work, enqueues after its commit, and
a second run right after does nothing; stuck deployments become gauges; the retention purge deletes only
what ended long ago."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import Gauge
from sqlalchemy.engine import Engine
from sqlmodel import Session

from config.settings import Settings
from models.enums import CredentialKind, CredentialStatus, Provider, PushEnvironment
from models.migrations.runner import upgrade
from models.statuses import Kind, Status
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.credentials import record_credential_check
from models.store.maintenance import RECEIPT
from models.store.unsent import UNSENT, record_unsent
from models.tables import Deployment, DeploymentEvent, Organization, ProviderHold, PushAttempt, table_of
from models.types import utcnow
from sandbox.tls import issue_client_certificate, make_ca
from scheduler import certificates, gauges, jobs
from tests.conftest import MakeDeployments
from tests.helpers import free_ports
from tests.integration.providers.conftest import TOPIC
from workers.actors import Actors, declare_actors
from workers.app import App
from workers.broker import BULK_QUEUE, URGENT_QUEUE
from workers.queue_wait import OrganizationLabels
from workers.services.credentials import store_credential

DEPLOYMENT = table_of(Deployment)
EVENT = table_of(DeploymentEvent)
ATTEMPT = table_of(PushAttempt)

COUNT = 2_500  # two and a half pages of PAGE = 1,000


@pytest.fixture(params=["sqlite", "postgresql"])
def actors(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Actors]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'scheduler.db'}"
        upgrade(url)
    else:
        request.getfixturevalue("pg")  # empties the tables
        url = request.getfixturevalue("postgres_url")
    app = App(Settings(database_url=url, broker_url="stub://", relay_grace_s=30, stuck_after_s=600))
    yield declare_actors(app)
    app.close()


def _messages(actors: Actors) -> int:
    broker = actors.app.broker
    return sum(len(broker.queues[q].queue) for q in (URGENT_QUEUE, BULK_QUEUE))


def _set_where(engine: Engine, where: sa.ColumnElement[bool], **values: object) -> None:
    with engine.begin() as connection:
        connection.execute(sa.update(DEPLOYMENT).where(where).values(**values))


def _devices_of(engine: Engine, ids: list[str]) -> list[str]:
    with engine.connect() as connection:
        statement = sa.select(DEPLOYMENT.c.device_id).where(DEPLOYMENT.c.id.in_(ids))
        return list(connection.execute(statement).scalars())


def _set(engine: Engine, **values: object) -> None:
    with engine.begin() as connection:
        connection.execute(sa.update(DEPLOYMENT).values(**values))


def test_due_postponements_are_requeued_in_pages_and_a_second_run_does_nothing(
    actors: Actors, make_deployments: MakeDeployments
) -> None:
    engine = actors.app.engine
    make_deployments(engine, Kind.profile, count=COUNT)
    now = utcnow()
    _set(engine, status=Status.postponed.value, next_attempt_at=now - timedelta(seconds=1), enqueued_at=now)

    assert jobs.requeue_postponed_job(actors, now) == COUNT
    assert jobs.requeue_postponed_job(actors, now) == 0
    with engine.connect() as connection:
        rows = connection.execute(sa.select(DEPLOYMENT.c.status, DEPLOYMENT.c.enqueued_at)).all()
    assert {row.status for row in rows} == {Status.queued.value}
    assert all(row.enqueued_at is not None for row in rows), "enqueued, and marked so after the send"
    assert _messages(actors) >= COUNT // actors.app.settings.dispatch_chunk_size


def test_the_relay_sends_what_was_never_enqueued_once(
    actors: Actors, make_deployments: MakeDeployments
) -> None:
    engine = actors.app.engine
    make_deployments(engine, Kind.app, count=COUNT)
    later = utcnow() + timedelta(seconds=31)

    assert jobs.relay_job(actors, utcnow()) == 0, "within the grace they may still be on their way"
    assert jobs.relay_job(actors, later) == COUNT
    assert jobs.relay_job(actors, later) == 0


def test_a_create_whose_process_died_before_the_send_is_relayed_after_the_grace(
    actors: Actors, make_deployments: MakeDeployments
) -> None:
    """Written as enqueued already, with the unsent record of `Actors.create`, and never sent: the relay takes
    them once the record is older than the grace, not the re-push ten minutes later."""
    engine = actors.app.engine
    devices = _devices_of(engine, make_deployments(engine, Kind.app, count=COUNT))
    now = utcnow()
    with actors.app.session() as s:
        ids = create_deployments(
            s,
            organization_id="acme",
            deployments=[NewDeployment(d, Kind.profile) for d in devices],
            now=now,
            redeliver_after_s=600,
        )
        record_unsent(s, organization_id="acme", ids=ids, now=now)
    _set_where(engine, DEPLOYMENT.c.id.not_in(ids), enqueued_at=now, next_attempt_at=now + timedelta(hours=1))
    later = now + timedelta(seconds=31)

    assert jobs.relay_job(actors, now) == 0, "within the grace they may still be on their way"
    assert jobs.relay_job(actors, later) == COUNT
    assert jobs.relay_job(actors, later) == 0
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(UNSENT)).scalar() == 0
        enqueued = connection.execute(sa.select(DEPLOYMENT.c.enqueued_at).where(DEPLOYMENT.c.id.in_(ids)))
        assert all(at is not None for (at,) in enqueued)


def test_a_create_with_the_broker_away_returns_its_ids_and_leaves_them_to_the_relay(
    actors: Actors, make_deployments: MakeDeployments
) -> None:
    engine = actors.app.engine
    devices = _devices_of(engine, make_deployments(engine, Kind.app, count=3))
    [port] = free_ports(1)  # nobody listens there: every send fails as with a broker down
    away = App(actors.app.settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{port}/0"}))
    try:
        unreachable = declare_actors(away)
        ids = unreachable.create("acme", [NewDeployment(d, Kind.profile) for d in devices]).ids
        assert unreachable.enqueue_ids(ids) == 0, "a retry's or a release's enqueue neither raises"
    finally:
        away.close()

    assert len(ids) == 3
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(UNSENT)).scalar() == 0
        rows = connection.execute(
            sa.select(DEPLOYMENT.c.enqueued_at, DEPLOYMENT.c.next_attempt_at).where(DEPLOYMENT.c.id.in_(ids))
        ).all()
    assert len(rows) == 3
    assert all(row.enqueued_at is None and row.next_attempt_at is None for row in rows)
    relayed = jobs.relay_job(actors, utcnow() + timedelta(seconds=31))
    assert relayed == 3 + 3, "with make_deployments' own three, never enqueued either"


def test_stuck_deployments_are_counted_per_kind_and_status(
    actors: Actors, make_deployments: MakeDeployments
) -> None:
    engine = actors.app.engine
    waiting = make_deployments(engine, Kind.profile, count=3)
    make_deployments(engine, Kind.security_action, count=2)  # Queued just now: not stuck
    an_hour_ago = utcnow() - timedelta(hours=1)
    with engine.begin() as connection:
        connection.execute(
            sa.update(DEPLOYMENT)
            .where(DEPLOYMENT.c.id.in_(waiting))
            .values(status=Status.waiting.value, updated_at=an_hour_ago)
        )

    assert jobs.stuck_job(actors, utcnow()) == 3
    gauge = gauges.STUCK.labels(kind="profile", status="Waiting")._value.get()
    assert gauge == 3
    assert gauges.STUCK.labels(kind="security_action", status="Queued")._value.get() == 0


def test_retention_deletes_what_ended_long_ago_with_its_events_and_failed_pushes_and_nothing_else(
    actors: Actors, make_deployments: MakeDeployments
) -> None:
    engine = actors.app.engine
    old = make_deployments(engine, Kind.profile, count=3)
    recent = make_deployments(engine, Kind.profile, count=2)
    reopened = make_deployments(engine, Kind.profile, count=1)  # retried: no finished_at
    long_ago = utcnow() - timedelta(days=actors.app.settings.retention_days + 1)
    with engine.begin() as connection:
        connection.execute(
            sa.update(DEPLOYMENT)
            .where(DEPLOYMENT.c.id.in_(old))
            .values(status=Status.completed.value, finished_at=long_ago)
        )
        connection.execute(
            sa.update(DEPLOYMENT)
            .where(DEPLOYMENT.c.id.in_(recent))
            .values(status=Status.completed.value, finished_at=utcnow())
        )
        connection.execute(
            sa.update(DEPLOYMENT).where(DEPLOYMENT.c.id.in_(reopened)).values(status=Status.queued.value)
        )
        connection.execute(
            sa.insert(EVENT),
            [
                {"deployment_id": d, "to_status": "Completed", "actor": "device", "at": long_ago}
                for d in old + recent
            ],
        )
        connection.execute(
            sa.insert(ATTEMPT),
            [
                {
                    "deployment_id": d,
                    "at": long_ago,
                    "provider": "apns",
                    "outcome": "transient",
                    "status": 503,
                }
                for d in old + recent
            ],
        )

    assert jobs.retention_job(actors, utcnow()) == 3
    assert jobs.retention_job(actors, utcnow()) == 0
    with engine.connect() as connection:
        left = set(connection.execute(sa.select(DEPLOYMENT.c.id)).scalars())
        with_events = set(connection.execute(sa.select(EVENT.c.deployment_id)).scalars())
        with_attempts = set(connection.execute(sa.select(ATTEMPT.c.deployment_id)).scalars())
    assert left == set(recent + reopened)
    assert with_events == set(recent)
    assert with_attempts == set(recent)


def test_the_gauges_job_shows_held_and_paced_for_the_organizations_the_workers_name(
    actors: Actors, make_deployments: MakeDeployments
) -> None:
    engine = actors.app.engine
    for n, organization in enumerate(("held", "paced", "plain"), start=1):
        make_deployments(engine, Kind.profile, count=n, organization_id=organization)
    with Session(engine) as s, s.begin():
        s.add(ProviderHold(organization_id="held", provider=Provider.apns, scope="config", reason="BadTopic"))
        paced = s.get(Organization, "paced")
        assert paced is not None
        paced.wake_rate_per_s = 30.0
    workers = OrganizationLabels()
    workers.refresh(actors.app.session, now=utcnow())
    gauges.NAMED.forget()  # an earlier test's database ranked in this window

    gauges.gauges_job(actors, utcnow())

    def shown(gauge: Gauge) -> dict[str, float]:
        return {s.labels["organization"]: s.value for m in gauge.collect() for s in m.samples}

    assert shown(gauges.ORGANIZATION_HELD) == {"held": 1, "paced": 0, "plain": 0, "other": 0}
    assert shown(gauges.ORGANIZATION_PACED) == {"held": 0, "paced": 1, "plain": 0, "other": 0}
    assert set(shown(gauges.ORGANIZATION_HELD)) == workers.named | {"other"}
    gauges.clear()
    assert shown(gauges.ORGANIZATION_HELD) == {}, "a standby exports none"


def test_the_gauges_job_counts_statuses_holds_pending_devices_and_the_backlog(
    actors: Actors, make_deployments: MakeDeployments
) -> None:
    engine = actors.app.engine
    profiles = make_deployments(engine, Kind.profile, count=4)  # iOS devices: APNs
    make_deployments(engine, Kind.security_action, count=2)
    now = utcnow()
    reason = "APNs refused the credential: InvalidProviderToken"
    with engine.begin() as connection:
        connection.execute(
            sa.update(DEPLOYMENT).where(DEPLOYMENT.c.id.in_(profiles[:1])).values(status=Status.failed.value)
        )
        connection.execute(
            sa.update(DEPLOYMENT).where(DEPLOYMENT.c.id.in_(profiles[1:3])).values(hold_reason=reason)
        )
        receipt = {"organization_id": "acme", "provider": "aosp", "device_count": 9, "sent_at": now}
        connection.execute(
            sa.insert(RECEIPT),
            [
                receipt | {"pending_devices": 5, "expires_at": now + timedelta(hours=1)},
                receipt | {"pending_devices": 2, "expires_at": None},
                receipt | {"pending_devices": 7, "expires_at": now - timedelta(seconds=1)},  # expired
                receipt | {"pending_devices": 0, "expires_at": now + timedelta(hours=1)},
            ],
        )
    actors.dispatch_bulk.send(["one"])
    actors.dispatch_bulk.send_with_options(args=(["two"],), delay=60_000)

    assert gauges.gauges_job(actors, now) == 2, "two held"
    value = gauges.DEPLOYMENTS.labels
    assert (value(kind="profile", status="Queued")._value.get(), value("profile", "Failed")._value.get()) == (
        3,
        1,
    )
    assert value(kind="security_action", status="Queued")._value.get() == 2
    assert value(kind="message", status="Notification created")._value.get() == 0, "every status is a series"
    assert gauges.HELD.labels(provider="apns", reason=reason)._value.get() == 2
    assert gauges.PENDING_DEVICES.labels(provider="aosp")._value.get() == 7, "unexpired pushes only"
    assert gauges.PENDING_DEVICES.labels(provider="fcm")._value.get() == 0
    backlog = gauges.QUEUE_MESSAGES.labels
    assert (backlog(BULK_QUEUE, "ready")._value.get(), backlog(BULK_QUEUE, "delayed")._value.get()) == (1, 1)
    assert backlog(URGENT_QUEUE, "ready")._value.get() == 0

    # The hold ends: its series goes, rather than staying at its last count.
    with engine.begin() as connection:
        connection.execute(sa.update(DEPLOYMENT).values(hold_reason=None))
    gauges.gauges_job(actors, now)
    assert {
        (s.labels["provider"], s.labels["reason"], s.value) for m in gauges.HELD.collect() for s in m.samples
    } == {
        ("apns", "", 0),
        ("fcm", "", 0),
        ("aosp", "", 0),
    }, "a 0 per provider, with no reason"


def test_an_uploaded_credential_shows_in_its_gauges_at_the_next_gauges_run(actors: Actors) -> None:
    ca = make_ca(days=400)
    certificate = issue_client_certificate(ca, TOPIC, days=20)
    with actors.app.session() as s:
        ensure_organization(s, organization_id="gauged")
        stored = store_credential(
            s,
            organization_id="gauged",
            provider=Provider.apns,
            kind=CredentialKind.apns_certificate,
            secret=(certificate.cert_pem + certificate.key_pem).decode(),
            environment=PushEnvironment.sandbox,
        ).credential
    assert stored.not_after is not None

    gauges.gauges_job(actors, utcnow())  # every 30 s; the certificate watch has not run (hourly)
    expiry = certificates.EXPIRY.labels(source="push_credential", name="gauged/apns")._value.get()
    accepted = certificates.CREDENTIAL_ACCEPTED.labels(organization="gauged", provider="apns")
    assert (expiry, accepted._value.get()) == (stored.not_after.timestamp(), 1)

    with actors.app.session() as s:  # as the watch records a provider's refusal
        record_credential_check(
            s, credential_id=stored.id, checked_at=utcnow(), status=CredentialStatus.revoked,
            status_reason="refused", alerted_days=0,
        )  # fmt: skip
    gauges.gauges_job(actors, utcnow())
    assert accepted._value.get() == 0
