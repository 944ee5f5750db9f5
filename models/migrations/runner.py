"""Runs the Alembic migrations programmatically: `mdmq db upgrade`, the Procfile's `release`, the tests."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

log = logging.getLogger(__name__)

SCRIPT_LOCATION = Path(__file__).parent


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    # ConfigParser interpolation would choke on a %-escaped password.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def is_current(database_url: str) -> bool:
    """Whether the database is at the newest schema (False too when it cannot be reached yet)."""
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_heads()
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()
    return set(current) == set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())


def wait_until_current(database_url: str, timeout_s: float, *, every_s: float = 1.0) -> bool:
    """Wait for the release step (`mdmq db upgrade`) to bring the database to the newest schema, when it
    runs beside this process (honcho, a Kubernetes Job); False if `timeout_s` passed first."""
    deadline = time.monotonic() + timeout_s
    while not is_current(database_url):
        if time.monotonic() >= deadline:
            return False
        log.info("waiting for the database schema: the release step (mdmq db upgrade) has not run yet")
        time.sleep(every_s)  # a process's start-up wait, not an actor's
    return True
