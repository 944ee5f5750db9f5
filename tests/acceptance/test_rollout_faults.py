"""A crash between commit and enqueue, relayed through RabbitMQ with real `dramatiq` worker processes: the
run ends with every deployment in the status its simulated device dictates. The other faults (a worker
SIGKILLed, Redis or PostgreSQL restarted, 503 storms, 429 bursts, GOAWAY, garbage answers, a revoked push
certificate) are the fault suite's, on Redis: `test_fault_suite.py`.

The rollouts are the demo's (`sandbox.rollout.Rollout`): the sandbox's emulators and fleet in this process,
the workers in their own, the sweeps on a thread.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from config.settings import Settings
from models.statuses import Kind, Status
from sandbox.rollout import Rollout
from tests.helpers import free_ports
from tests.services import RABBITMQ_URL, require

pytestmark = pytest.mark.timeout(600)

State = list[tuple[str, str, Kind, Status]]


@pytest.fixture
def on_rabbitmq(pg: Engine, postgres_url: str) -> Settings:
    require(RABBITMQ_URL, "RabbitMQ")
    return Settings(database_url=postgres_url, broker_url=RABBITMQ_URL, **metrics_on_a_free_port())


def metrics_on_a_free_port() -> dict[str, Any]:
    """The workers' metrics server on loopback, on a port nothing else holds."""
    return {"metrics_host": "127.0.0.1", "worker_metrics_port": free_ports(1)[0]}


def explain(engine: Engine, rollout: Rollout, state: State) -> str:
    """Every deployment not in the status its device dictates, with its device's behaviour and history:
    what a failed run must say for its cause to be found from the CI log alone."""
    wrong = [
        (deployment_id, device_id, kind, status)
        for deployment_id, device_id, kind, status in state
        if status is not rollout.fleet.expected_status(device_id, kind)
    ]
    lines = []
    with engine.connect() as connection:
        for deployment_id, device_id, kind, status in wrong[:20]:
            device = rollout.fleet.device(device_id)
            error = connection.execute(
                sa.text("SELECT error_message FROM deployment WHERE id = :id"), {"id": deployment_id}
            ).scalar()
            lines.append(
                f"{deployment_id} {kind.value} on {device.provider.value} {device.behaviour.value}: "
                f"{status.value}, expected {rollout.fleet.expected_status(device_id, kind).value}; {error}"
            )
            events = connection.execute(
                sa.text(
                    "SELECT at, from_status, to_status, actor, detail FROM deployment_event "
                    "WHERE deployment_id = :id ORDER BY id"
                ),
                {"id": deployment_id},
            )
            lines.extend(
                f"    {e.at:%H:%M:%S.%f} {e.from_status} -> {e.to_status} ({e.actor}) {e.detail}"
                for e in events
            )
    return "\n".join([f"{len(wrong)} of {len(state)} deployments not as dictated", *lines])


def test_a_rollout_committed_but_never_enqueued_is_re_pushed_through_rabbitmq(
    pg: Engine, on_rabbitmq: Settings
) -> None:
    with Rollout(on_rabbitmq, devices=150, seed=13) as rollout:
        ids = rollout.start(enqueue=False)  # the "crash": committed, and nothing sent to the broker
        with pg.connect() as connection:
            unpushed = connection.execute(
                sa.text(
                    "SELECT count(*) FROM deployment "
                    "WHERE enqueued_at IS NOT NULL AND next_attempt_at IS NOT NULL AND pushed_at IS NULL"
                )
            ).scalar_one()
        assert unpushed == len(ids), "written as enqueued, with a re-push time: the re-push sweep's to find"
        state = rollout.wait(300)
        result = rollout.result(state, 0)

    assert result.total == len(ids)
    assert result.ok, explain(pg, rollout, state)
