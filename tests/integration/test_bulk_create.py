"""Bulk creation on both backends: COPY on PostgreSQL, batched INSERTs on SQLite; all or nothing."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from models.enums import Platform
from models.statuses import Kind, Status
from models.store import NewDeployment, UnknownDevices, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.tables import Deployment, DeploymentEvent


def _devices(engine: Engine, organization_id: str, count: int) -> list[str]:
    with Session(engine) as session, session.begin():
        ensure_organization(session, organization_id=organization_id)
        return add_devices(
            session,
            organization_id=organization_id,
            devices=[NewDevice(Platform.android, f"fcm-{organization_id}-{i}") for i in range(count)],
        )


def _count(engine: Engine, model: type[Deployment] | type[DeploymentEvent]) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def test_thousands_of_deployments_are_created_queued_and_in_order(engine: Engine) -> None:
    devices = _devices(engine, "acme", 3_000)
    profile = {"identifier": "com.acme.wifi", "payload": {"ssid": "Acme", "hidden": False}}
    wanted = [NewDeployment(d, Kind.profile if i % 3 else Kind.app, profile) for i, d in enumerate(devices)]

    with Session(engine) as session, session.begin():
        ids = create_deployments(session, organization_id="acme", deployments=wanted, batch_size=1_000)

    assert len(set(ids)) == 3_000
    with Session(engine) as session:
        rows = session.exec(select(Deployment).order_by(col(Deployment.id))).all()
    assert [r.id for r in rows] == sorted(ids)
    assert {r.status for r in rows} == {Status.queued}
    assert all(r.payload == profile for r in rows)
    by_id = {r.id: r for r in rows}
    assert [by_id[i].device_id for i in ids] == devices, "ids come back in the order asked"
    assert sum(r.kind is Kind.app for r in rows) == 1_000
    assert {r.organization_id for r in rows} == {"acme"}
    assert _count(engine, DeploymentEvent) == 0, "creation is the deployment's created_at, not a transition"


@pytest.mark.parametrize("bad", ["f" * 24, "other-org-device", "not\tan id"])
def test_one_unknown_device_creates_nothing_and_names_it(engine: Engine, bad: str) -> None:
    devices = _devices(engine, "acme", 50)
    [foreign] = _devices(engine, "globex", 1)
    bad_id = foreign if bad == "other-org-device" else bad
    wanted = [NewDeployment(d, Kind.profile) for d in [*devices[:25], bad_id, *devices[25:]]]

    with Session(engine) as session, session.begin(), pytest.raises(UnknownDevices) as raised:
        create_deployments(session, organization_id="acme", deployments=wanted)

    assert raised.value.device_ids == [bad_id]
    assert bad_id in str(raised.value)
    assert _count(engine, Deployment) == 0


def _estimated_rows(engine: Engine) -> float:
    with engine.connect() as connection:
        return float(
            connection.execute(
                sa.text("SELECT reltuples FROM pg_class WHERE oid = 'deployment'::regclass")
            ).scalar_one()
        )


def _autovacuum(engine: Engine, *, enabled: bool) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text(f"ALTER TABLE deployment SET (autovacuum_enabled = {str(enabled).lower()})")
        )


def test_a_creation_larger_than_the_table_s_statistics_refreshes_them_and_a_smaller_one_does_not(
    pg: Engine, request: pytest.FixtureRequest
) -> None:
    """Stale statistics made the planner scan the whole table for each dispatch's claim (160 s instead of 55
    to push 100,000 deployments); the creation that makes them stale refreshes them, and only that one."""
    devices = _devices(pg, "acme", 400)
    assert _estimated_rows(pg) < 300, "an emptied table"
    _autovacuum(pg, enabled=False)  # only the creations may refresh the statistics here
    request.addfinalizer(lambda: _autovacuum(pg, enabled=True))

    with Session(pg) as session, session.begin():
        create_deployments(
            session,
            organization_id="acme",
            deployments=[NewDeployment(d, Kind.profile) for d in devices[:300]],
        )
    assert _estimated_rows(pg) == 300

    with Session(pg) as session, session.begin():
        create_deployments(
            session, organization_id="acme", deployments=[NewDeployment(d, Kind.app) for d in devices[300:]]
        )
    assert _estimated_rows(pg) == 300, "statistics of the table's size are left to autovacuum"
