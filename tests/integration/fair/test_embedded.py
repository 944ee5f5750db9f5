"""The fair queue of the embedded default (the in-process broker, worker threads in this process) on
PostgreSQL and the sandbox's APNs: an organization that comes second is served beside the first, and a
paced one no faster than its rate; and each broker gets the fair queue its processes can all see."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import dramatiq
import pytest
from sqlalchemy.engine import Engine

from config.settings import Settings
from models.store.organizations import set_fair_share
from sandbox import Sandbox
from tests.acceptance.test_fair_share import World, _profiles, fleets_world
from tests.helpers import sandbox_settings, wait_until
from tests.services import RABBITMQ_URL, REDIS_URL
from workers.actors import declare_actors
from workers.app import App
from workers.fair.database import DatabaseFairQueue
from workers.fair.memory import MemoryFairQueue
from workers.fair.redis import RedisFairQueue


@pytest.fixture
def world(pg: Engine, postgres_url: str, tmp_path: Path) -> Iterator[World]:
    def settings(sandbox: Sandbox) -> AbstractContextManager[Settings]:
        return nullcontext(
            sandbox_settings(
                sandbox, tmp_path, database_url=postgres_url, broker_url="stub://", dispatch_chunk_size=20
            )
        )

    sizes = {"acme": 600, "beta": 40, "calm": 40}
    with fleets_world(sizes, latency_ms=20, settings=settings) as world:
        yield world


def test_in_process_the_second_organization_goes_beside_the_first_and_the_paced_one_at_its_rate(
    world: World,
) -> None:
    app = App(world.settings)
    actors = declare_actors(app)
    with app.session() as s:
        set_fair_share(s, organization_id="calm", wake_rate_per_s=20.0)
    worker = dramatiq.Worker(app.broker, worker_threads=4, worker_timeout=50)
    worker.start()
    try:
        actors.create("acme", _profiles(world.devices["acme"]))
        actors.create("beta", _profiles(world.devices["beta"]))
        wait_until(lambda: world.count("acme") + world.count("beta") == 640, 120, "acme's and beta's pushes")
        actors.create("calm", _profiles(world.devices["calm"]))
        wait_until(lambda: world.count("calm") == 40, 60, "calm's pushes")
    finally:
        worker.stop()
        app.close()

    acme, beta, calm = world.times("acme"), world.times("beta"), world.times("calm")
    assert sum(1 for t in acme if t > beta[-1]) >= 300, "beta's 2 chunks went early in acme's 30"
    assert max(sum(1 for t in calm if start <= t < start + 1.0) for start in calm) <= 1.2 * 20
    assert 40 / 20 * 0.9 <= calm[-1] - calm[0] <= 40 / 20 * 1.5


@pytest.mark.parametrize(
    ("url", "kind"),
    [("stub://", MemoryFairQueue), (REDIS_URL, RedisFairQueue), (RABBITMQ_URL, DatabaseFairQueue)],
)
def test_each_broker_gets_the_fair_queue_its_processes_share(url: str, kind: type) -> None:
    app = App(Settings(database_url="sqlite://", broker_url=url))
    try:
        assert isinstance(app.fair, kind)
    finally:
        app.close()
