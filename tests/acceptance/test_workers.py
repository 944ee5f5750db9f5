"""The rollout on PostgreSQL and Redis with real `dramatiq` worker processes: simulated devices of mixed
outcomes, and every deployment ends in the status its device dictates, with its history."""

from __future__ import annotations

import json

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.helpers import run_mdmq
from tests.services import REDIS_URL, require


@pytest.mark.timeout(600)
def test_a_rollout_of_2000_devices_through_real_worker_processes(pg: Engine, postgres_url: str) -> None:
    # `pg` empties the tables first: the counts below must see the demo's rows and nothing another test left.
    require(REDIS_URL, "Redis")
    redis.Redis.from_url(REDIS_URL).flushdb()  # this test's own database number: no stale messages
    settings = {"MDMQ_DATABASE_URL": postgres_url, "MDMQ_BROKER_URL": REDIS_URL}

    result = run_mdmq("demo", "--devices", "2000", "--json", "--timeout", "420", env=settings, timeout_s=600)

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    summary = json.loads(result.stdout)
    assert summary["devices"] == 2_000
    assert summary["matched"] == summary["total"] > 5_000
    with pg.connect() as connection:
        moved = connection.execute(
            sa.text("SELECT count(*) FROM deployment WHERE status <> 'Queued'")
        ).scalar_one()
        without_history = connection.execute(
            sa.text(
                "SELECT count(*) FROM deployment d WHERE d.status <> 'Queued' AND NOT EXISTS "
                "(SELECT 1 FROM deployment_event e WHERE e.deployment_id = d.id AND e.to_status = d.status)"
            )
        ).scalar_one()
    assert moved == summary["total"], "every deployment left Queued"
    assert without_history == 0, "every status has the event that put it there"
