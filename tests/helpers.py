"""Test-only helpers: reaching under the store to put a deployment in a status, running `mdmq`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, func, select

from models.statuses import Status
from models.store import deployment_history, get_deployment
from models.tables import DeploymentEvent


def force_status(engine: Engine, deployment_id: str, status: Status) -> None:
    """Set the status without a transition (and without an event), to start a test from it."""
    with engine.begin() as connection:
        table = SQLModel.metadata.tables["deployment"]
        connection.execute(sa.update(table).where(table.c.id == deployment_id).values(status=status.value))


def status_of(engine: Engine, deployment_id: str) -> Status:
    with Session(engine) as session:
        deployment = get_deployment(session, deployment_id=deployment_id)
        assert deployment is not None
        return deployment.status


def events_of(engine: Engine, deployment_id: str) -> list[DeploymentEvent]:
    with Session(engine) as session:
        return deployment_history(session, deployment_id=deployment_id)


def event_count(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count(col(DeploymentEvent.id)))).one()


def run_mdmq(
    *args: str, env: dict[str, str], timeout_s: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The `mdmq` command through its real entry point, with `env` as its only MDMQ_ settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MDMQ_")}
    command = [sys.executable, "-c", "from cli.main import main; main()", *args]
    return subprocess.run(
        command, env=clean | env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
    )
