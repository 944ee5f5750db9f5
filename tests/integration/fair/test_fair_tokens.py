"""The scheduler's `fair_tokens` job on Redis and PostgreSQL, with a real `dramatiq` worker and the
sandbox's APNs: chunks in either fair lane whose tokens were lost are dispatched after one run, not left
to the re-push sweep."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path

import dramatiq
import pytest
from sqlalchemy.engine import Engine

from config.settings import Settings
from models.store import create_deployments
from sandbox import Sandbox
from scheduler import jobs
from tests.acceptance.test_fair_share import World, _profiles, fleets_world
from tests.helpers import wait_until, worker_process_settings
from workers.actors import declare_actors
from workers.app import App
from workers.fair import FairLaneName
from workers.fair.database import DatabaseFairQueue
from workers.fair.redis import RedisFairQueue

DEVICES = 40


@pytest.fixture
def world(pg: Engine, postgres_url: str, tmp_path: Path) -> Iterator[World]:
    def settings(sandbox: Sandbox) -> AbstractContextManager[Settings]:
        return worker_process_settings(sandbox, tmp_path, database_url=postgres_url)

    with fleets_world({"acme": DEVICES}, latency_ms=5, settings=settings) as world:
        yield world


# The Redis broker carries the tokens either way; "postgresql" keeps the fair queue in the database, as
# beside a RabbitMQ broker (whose queues no test namespace separates from another run's).
@pytest.mark.parametrize("store", ["redis", "postgresql"])
def test_chunks_that_lost_their_tokens_are_dispatched_after_one_run(world: World, store: str) -> None:
    app = App(world.settings)
    if store == "postgresql":
        app.__dict__["fair"] = DatabaseFairQueue(app.session)
        app.__dict__["paced"] = DatabaseFairQueue(app.session, lane=FairLaneName.paced)
    assert isinstance(app.paced, RedisFairQueue if store == "redis" else DatabaseFairQueue)
    actors = declare_actors(app)
    with app.session() as s:
        ids = create_deployments(s, organization_id="acme", deployments=_profiles(world.devices["acme"]))
    # Two chunks on the bulk lane, two on the paced lane's; one paced token on its way (due in 10 s), no
    # other token sent.
    app.fair.put("acme", [ids[0:10], ids[10:20]])
    app.paced.put("acme", [ids[20:30], ids[30:40]])
    actors.send_token(FairLaneName.paced, delay_s=10.0)
    worker = dramatiq.Worker(app.broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        # Counted once free to go for the grace (workers.fair.READY_GRACE_S), their tokens not come.
        ready = (2, 2)
        wait_until(lambda: (app.fair.ready(100), app.paced.ready(100)) == ready, 10, "the chunks counted")
        # A token for each chunk, less the one on its way: any token takes any chunk in turn.
        assert jobs.fair_tokens_job(actors, datetime.now(UTC)) == 3
        wait_until(lambda: world.count("acme") == 30, 8, "the pushes of the tokens sent")
        assert app.paced.waits("acme"), "one chunk left for the token on its way, not a second token"
        wait_until(lambda: world.count("acme") == DEVICES, 60, "every push")
        wait_until(lambda: app.fair.ready(100) + app.paced.ready(100) == 0, 10, "the chunks taken")
        assert jobs.fair_tokens_job(actors, datetime.now(UTC)) == 0
    finally:
        worker.stop()
        app.close()
