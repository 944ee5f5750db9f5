"""Two `python -m scheduler` processes against one PostgreSQL: one runs the jobs; SIGKILL it and the other
leads within one lease period; at no moment do both run a job (every run is a row in `scheduler_run`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from models.types import utcnow
from tests.helpers import free_ports, scraped, wait_until
from tests.services import REDIS_URL, require

LEASE_S = 3.0
SWEEP_S = 0.2
MARGIN = 3  # deadlines read off the wall clock of a shared machine get three times their nominal length


def runs(engine: Engine) -> list[sa.Row[tuple[str, str, datetime, datetime | None]]]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.text("SELECT job, holder, started_at, finished_at FROM scheduler_run ORDER BY started_at")
            )
        )


METRICS_PORTS: dict[int, int] = {}  # a scheduler process's pid -> the port its /metrics is served on


def leader_gauge(process: subprocess.Popen[bytes]) -> float | None:
    """`mdmq_scheduler_leader` as the process's own /metrics says it; None while it does not answer yet."""
    return scraped(f"http://127.0.0.1:{METRICS_PORTS[process.pid]}/metrics").get("mdmq_scheduler_leader")


@pytest.fixture
def schedulers(pg: Engine, postgres_url: str, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    require(REDIS_URL, "Redis")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MDMQ_")} | {
        "MDMQ_DATABASE_URL": postgres_url,
        "MDMQ_BROKER_URL": REDIS_URL,
        "MDMQ_SCHEDULER_LEASE_S": str(LEASE_S),
        "MDMQ_SWEEP_INTERVAL_S": str(SWEEP_S),
    }
    command = [sys.executable, "-m", "scheduler"]
    logs = [(tmp_path / f"scheduler-{i}.log").open("wb") for i in range(2)]
    ports = free_ports(2)
    processes = [
        subprocess.Popen(
            command,
            env=environment | {"MDMQ_METRICS_HOST": "127.0.0.1", "MDMQ_SCHEDULER_METRICS_PORT": str(port)},
            stderr=log,
        )
        for log, port in zip(logs, ports, strict=True)
    ]
    METRICS_PORTS.update({process.pid: port for process, port in zip(processes, ports, strict=True)})
    yield processes
    for process, log in zip(processes, logs, strict=True):
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        log.close()


def test_a_standby_leads_within_one_lease_period_of_a_sigkill_and_never_both(
    pg: Engine, schedulers: list[subprocess.Popen[bytes]]
) -> None:
    wait_until(lambda: len(runs(pg)) >= 10, 30, "the leader's first ten job runs")
    [leader] = {row.holder for row in runs(pg)}
    leader_pid = int(leader.split(":")[1])
    [process] = [p for p in schedulers if p.pid == leader_pid]
    [standby] = [p for p in schedulers if p.pid != leader_pid]
    wait_until(lambda: (leader_gauge(process), leader_gauge(standby)) == (1, 0), 10, "each says who leads")

    process.kill()  # SIGKILL: no release, no goodbye
    process.wait(timeout=10)
    killed_at = utcnow()
    wait_until(
        lambda: any(row.holder != leader for row in runs(pg)), (MARGIN + 1) * LEASE_S, "a run by the standby"
    )
    with pg.connect() as connection:
        taken_at = connection.execute(sa.text("SELECT acquired_at FROM scheduler_lease")).scalar_one()

    wait_until(
        lambda: leader_gauge(standby) == 1, MARGIN * LEASE_S, "the survivor's /metrics to say it leads"
    )
    standby.send_signal(signal.SIGTERM)
    assert standby.wait(timeout=30) == 0
    history = runs(pg)
    with pg.connect() as connection:
        released = connection.execute(sa.text("SELECT expires_at FROM scheduler_lease")).scalar_one()

    holders = {row.holder for row in history}
    assert len(holders) == 2
    old = [row for row in history if row.holder == leader]
    new = [row for row in history if row.holder != leader]
    # Nominally within one lease period (and a sweep); the margin keeps a loaded machine from failing it.
    assert taken_at - killed_at <= timedelta(seconds=MARGIN * LEASE_S), "taken over within one lease period"
    assert new[0].started_at - killed_at <= timedelta(seconds=MARGIN * (LEASE_S + SWEEP_S))
    old_end = max((row.finished_at or killed_at) for row in old)
    assert old_end <= new[0].started_at, "no run of the new leader began before the old one's last ended"
    assert all(row.finished_at is not None for row in new), "the survivor finished every run it began"
    assert {row.job for row in new} >= {"requeue_postponed", "repush", "relay"}
    assert released <= utcnow(), "a clean stop hands the lease over"
