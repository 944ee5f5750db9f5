"""The security suite: the real API on PostgreSQL, tried as an attacker and as a careless client would."""

from collections.abc import Callable

import pytest
from sqlalchemy.engine import Engine
from typer.testing import CliRunner, Result

from cli.main import app as mdmq_command
from tests.integration.api.conftest import Client, client, mdmq  # noqa: F401  (the API's fixtures)

Cli = Callable[..., Result]


@pytest.fixture
def cli(pg: Engine, postgres_url: str) -> Cli:
    """`mdmq` in this process, on the test database."""
    runner = CliRunner()
    env = {"MDMQ_DATABASE_URL": postgres_url, "MDMQ_BROKER_URL": "stub://", "COLUMNS": "200"}
    return lambda *args: runner.invoke(mdmq_command, list(args), env=env)
