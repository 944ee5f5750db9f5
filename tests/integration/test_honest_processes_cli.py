"""Honest processes: the long-running commands wait for the database naming why it is not ready, and
`mdmq db` says where the schema stands."""

from __future__ import annotations

import logging
import socket

import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner, Result

from cli.main import app as mdmq_command
from models.database import DRIVER_ERRORS, database_cause
from models.migrations.runner import SCRIPT_LOCATION, history, schema, wait_for_schema
from tests.helpers import run_mdmq
from tests.services import new_postgres_database


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_database(postgres_url: str, name: str) -> str:
    return make_url(postgres_url).set(database=name).render_as_string(hide_password=False)


@pytest.mark.parametrize("command", ["api", "worker", "scheduler"])
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


def db(*args: str, database_url: str) -> Result:
    """`mdmq db …` in this process, on `database_url`."""
    env = {"MDMQ_DATABASE_URL": database_url, "MDMQ_BROKER_URL": "stub://"}
    return CliRunner().invoke(mdmq_command, ["db", *args], env=env)


def test_db_current_follows_the_upgrades(postgres_url: str) -> None:
    newest = history(postgres_url)[0].id
    with new_postgres_database("mdmq_current") as url:
        empty = db("current", database_url=url)
        assert (empty.exit_code, empty.stdout.strip()) == (
            3,
            f"no revision (an empty database); the newest is {newest}: run `mdmq db upgrade`",
        )
        assert db("upgrade", "0005", database_url=url).exit_code == 0
        behind = db("current", database_url=url)
        assert (behind.exit_code, behind.stdout.strip()) == (
            3,
            f"0005; the newest is {newest}: run `mdmq db upgrade`",
        )
        assert db("upgrade", database_url=url).exit_code == 0
        current = db("current", database_url=url)
        assert (current.exit_code, current.stdout.strip()) == (0, f"{newest} (newest)")


def test_db_current_names_a_missing_database(postgres_url: str) -> None:
    result = db("current", database_url=with_database(postgres_url, "mdmq_no_such_database"))
    assert result.exit_code == 3
    assert result.stderr.startswith("mdmq: the database refused: database missing: ")
    assert "mdmq_no_such_database" in result.stderr


def test_db_history_lists_every_revision_newest_first(postgres_url: str) -> None:
    result = db("history", database_url=postgres_url)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    ids = [line.split()[0] for line in lines]
    assert ids == sorted(ids, reverse=True)
    assert ids[-1] == "0001"
    assert len(ids) == len(list(SCRIPT_LOCATION.glob("versions/*.py")))
    assert [line for line in lines if "(newest)" in line] == [lines[0]]
    assert "initial schema" in lines[-1]


def test_a_database_that_never_answers_is_unreachable_after_the_connect_timeout() -> None:
    with socket.socket() as silent:  # takes the connection (the backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"postgresql+psycopg://postgres@127.0.0.1:{silent.getsockname()[1]}/mdmq"
        with pytest.raises(DRIVER_ERRORS) as refused:
            schema(url, connect_timeout_s=2)
    assert database_cause(refused.value).startswith("unreachable: ")
    assert "timeout" in database_cause(refused.value)
