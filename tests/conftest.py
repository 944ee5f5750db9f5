"""Fixtures shared by every suite: databases (SQLite always, real PostgreSQL), sessions, factories."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

import models.tables  # noqa: F401  (registers the tables)
from models.database import create_engine
from models.enums import Platform
from models.migrations.runner import upgrade
from models.statuses import Kind
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.store.rollouts import create_rollout
from tests.sentry import sentry  # noqa: F401  (a fixture for every test)
from tests.services import CI, new_postgres_database

TABLES = (
    "idempotency_key",
    "fair_chunk",
    "fair_organization",
    "unsent_create",
    "provider_hold",
    "push_answer_window",
    "push_dead_answer",
    "audit_event",
    "deployment_event",
    "push_attempt",
    "deployment",
    "rollout",
    "push_receipt",
    "push_credential",
    "device",
    "watched_certificate",
    "scheduler_lease",
    "scheduler_run",
    "api_token",
    "organization",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(f"/{suite}/" in str(item.path) for suite in ("integration", "acceptance", "migration")):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # In CI a skipped integration test is a failure: it would hide a service that is not there.
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if CI and report.skipped and item.get_closest_marker("integration") is not None:
        report.outcome = "failed"
        report.longrepr = f"integration test skipped in CI: {report.longrepr}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, migrated to head by Alembic, dropped at the end."""
    with new_postgres_database("mdmq_test") as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    engine = create_engine(postgres_url, pool_size=4)
    yield engine
    engine.dispose()


@pytest.fixture
def pg(postgres_engine: Engine) -> Engine:
    """The PostgreSQL engine, with every table emptied before the test."""
    with postgres_engine.begin() as connection:
        connection.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    return postgres_engine


@pytest.fixture
def sqlite() -> Iterator[Engine]:
    """An in-memory SQLite database with the schema of the models."""
    engine = create_engine("sqlite://")
    SQLModel.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each backend in turn: the same test runs on SQLite and on PostgreSQL."""
    engine: Engine = request.getfixturevalue("sqlite" if request.param == "sqlite" else "pg")
    return engine


MakeDeployments = Callable[..., list[str]]
MakeRollout = Callable[..., tuple[str, list[str]]]


def _new_deployments(session: Session, kind: Kind, count: int, organization_id: str) -> list[NewDeployment]:
    ensure_organization(session, organization_id=organization_id)
    devices = add_devices(
        session,
        organization_id=organization_id,
        devices=[NewDevice(Platform.ios, f"token-{uuid.uuid4().hex}") for _ in range(count)],
    )
    return [NewDeployment(device_id, kind, {"profile": "wifi"}) for device_id in devices]


@pytest.fixture
def make_deployments() -> MakeDeployments:
    """Create an organization, `count` devices and one Queued deployment of `kind` for each; commits."""

    def make(engine: Engine, kind: Kind, count: int = 1, organization_id: str = "acme") -> list[str]:
        with Session(engine) as session, session.begin():
            wanted = _new_deployments(session, kind, count, organization_id)
            return create_deployments(session, organization_id=organization_id, deployments=wanted)

    return make


@pytest.fixture
def make_rollout() -> MakeRollout:
    """`make_deployments` as one rollout, as a create request makes them: its id and the deployments'."""

    def make(
        engine: Engine, kind: Kind, count: int = 1, organization_id: str = "acme"
    ) -> tuple[str, list[str]]:
        with Session(engine) as session, session.begin():
            wanted = _new_deployments(session, kind, count, organization_id)
            rollout_id = create_rollout(session, organization_id=organization_id, deployments=wanted)
            ids = create_deployments(
                session, organization_id=organization_id, deployments=wanted, rollout_id=rollout_id
            )
        return rollout_id, ids

    return make
