"""A worker process's warm-up: its threads' connections opened and the dispatch statements run on them,
before the first message, changing nothing; and a database that is down does not stop the process."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool
from sqlmodel import Session, func, select

from config.settings import Settings
from models.statuses import Kind, Status
from models.tables import Deployment, DeploymentEvent, PushReceipt
from tests.conftest import MakeDeployments
from workers.app import App
from workers.warm_up import warm_up


def test_the_warm_up_opens_each_threads_connection_and_changes_nothing(
    pg: Engine, postgres_url: str, make_deployments: MakeDeployments
) -> None:
    ids = make_deployments(pg, Kind.profile, count=3)
    app = App(Settings(database_url=postgres_url, broker_url="stub://", database_pool_size=6))
    try:
        assert warm_up(app, 4) == 4
        pool = app.engine.pool
        assert isinstance(pool, QueuePool)
        assert pool.checkedin() == 4, "one pooled connection a thread, ready for its first message"
        assert warm_up(app, 16) == 6, "no more than the pool keeps: more would be closed on return"
    finally:
        app.close()
    with Session(pg) as s:
        deployments = s.exec(select(Deployment)).all()
        assert sorted(d.id for d in deployments) == sorted(ids)
        assert {(d.status, d.attempt_count, d.receipt_id) for d in deployments} == {(Status.queued, 0, None)}
        assert s.exec(select(func.count()).select_from(PushReceipt)).one() == 0
        events = s.exec(select(func.count()).select_from(DeploymentEvent)).one()
    assert events == 0, "no deployment moved"


def test_a_database_that_is_down_at_boot_does_not_stop_the_workers(caplog: pytest.LogCaptureFixture) -> None:
    app = App(Settings(database_url="postgresql+psycopg://postgres@127.0.0.1:1/none", broker_url="stub://"))
    try:
        with caplog.at_level(logging.WARNING, logger="workers.warm_up"):
            assert warm_up(app, 4, timeout_s=30) == 0
    finally:
        app.close()
    assert "the database did not answer (OperationalError)" in caplog.text
