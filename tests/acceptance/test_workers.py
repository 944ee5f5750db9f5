"""The rollout on PostgreSQL and Redis with real `dramatiq` worker processes: simulated devices of mixed
outcomes, and every deployment ends in the status its device dictates, with its history.

500 devices here; the issue's 2,000 are not yet reliable (the simulated fleet's check-ins, not the
pipeline, fall behind the demo's push window; see the issue notes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import redis
import sqlalchemy as sa

from tests.services import REDIS_URL, require


def test_a_rollout_through_real_worker_processes(postgres_url: str) -> None:
    require(REDIS_URL, "Redis")
    redis.Redis.from_url(REDIS_URL).flushdb()  # this test's own database number: no stale messages
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MDMQ_")}
    environment |= {"MDMQ_DATABASE_URL": postgres_url, "MDMQ_BROKER_URL": REDIS_URL}
    command = [
        sys.executable,
        "-c",
        "from cli.main import main; main()",
        "demo",
        "--devices",
        "500",
        "--json",
        "--timeout",
        "420",
    ]

    result = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=600, check=False
    )

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    summary = json.loads(result.stdout)
    assert summary["devices"] == 500
    assert summary["matched"] == summary["total"] > 1_000
    engine = sa.create_engine(postgres_url)
    with engine.connect() as connection:
        moved = connection.execute(
            sa.text("SELECT count(*) FROM deployment WHERE status <> 'Queued'")
        ).scalar_one()
        without_history = connection.execute(
            sa.text(
                "SELECT count(*) FROM deployment d WHERE d.status <> 'Queued' AND NOT EXISTS "
                "(SELECT 1 FROM deployment_event e WHERE e.deployment_id = d.id AND e.to_status = d.status)"
            )
        ).scalar_one()
    engine.dispose()
    assert moved == summary["total"], "every deployment left Queued"
    assert without_history == 0, "every status has the event that put it there"
