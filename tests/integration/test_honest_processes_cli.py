"""Honest processes: the long-running commands wait for the database naming why it is not ready, and
`mdmq db` says where the schema stands."""

from __future__ import annotations

import logging
import socket

import pytest
from sqlalchemy.engine import make_url

from models.migrations.runner import wait_for_schema
from tests.helpers import run_mdmq
from tests.services import new_postgres_database


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_database(postgres_url: str, name: str) -> str:
    return make_url(postgres_url).set(database=name).render_as_string(hide_password=False)


@pytest.mark.parametrize("command", ["worker", "scheduler"])
def test_a_missing_database_is_named_not_an_unmigrated_schema(postgres_url: str, command: str) -> None:
    url = with_database(postgres_url, "mdmq_no_such_database")
    env = {"MDMQ_DATABASE_URL": url, "MDMQ_BROKER_URL": "stub://", "MDMQ_SCHEMA_WAIT_S": "2"}
    done = run_mdmq(command, env=env, timeout_s=60)
    assert done.returncode == 3
    first = next(line for line in done.stderr.splitlines() if "database" in line)
    assert "database missing" in first
    assert "mdmq_no_such_database" in first
    assert "schema" not in done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("mdmq: the database is not ready after 2 s: database missing")
    assert "Traceback" not in done.stderr


def test_an_unreachable_database_is_named_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/mdmq"
    with caplog.at_level(logging.INFO, logger="models.migrations.runner"):
        cause = wait_for_schema(url, 1.5, first_wait_s=0.5)
    assert cause is not None
    assert cause.startswith("unreachable: ")
    tries = [r for r in caplog.records if r.name == "models.migrations.runner"]
    assert len(tries) >= 2, "it tried again"
    assert all(r.levelno == logging.WARNING and "unreachable" in r.getMessage() for r in tries)


def test_an_empty_database_is_a_schema_behind(caplog: pytest.LogCaptureFixture) -> None:
    with new_postgres_database("mdmq_empty") as url, caplog.at_level(logging.INFO):
        cause = wait_for_schema(url, 0)
    assert cause is not None
    assert cause.startswith("schema behind: at no revision, the newest is ")
    assert cause.endswith("run `mdmq db upgrade`")


def test_a_current_database_is_ready_at_once(postgres_url: str) -> None:
    assert wait_for_schema(postgres_url, 0) is None
