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

from models.database import DRIVER_ERRORS, database_cause

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
    return schema_cause(database_url) is None


def schema_cause(database_url: str) -> str | None:
    """Why the database is not at the newest schema, in one line (`unreachable: …`, `database missing: …`,
    `authentication failed: …`, `schema behind: …`); None when it is."""
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    except DRIVER_ERRORS as e:
        return database_cause(e)
    finally:
        engine.dispose()
    newest = set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())
    if current == newest:
        return None
    at = ", ".join(sorted(current)) or "no revision"
    return f"schema behind: at {at}, the newest is {', '.join(sorted(newest))}; run `mdmq db upgrade`"


def wait_for_schema(
    database_url: str, timeout_s: float, *, first_wait_s: float = 1.0, most_wait_s: float = 15.0
) -> str | None:
    """Wait for the database to be at the newest schema: the release step (`mdmq db upgrade`) may run beside
    this process (honcho, a Kubernetes Job), the database may still be starting. Tries again with a wait
    that doubles up to `most_wait_s`, logging the cause each time; None once current, else the last cause
    when `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    wait_s = first_wait_s
    while (cause := schema_cause(database_url)) is not None:
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            return cause
        log.log(
            logging.INFO if cause.startswith("schema behind") else logging.WARNING,
            "waiting for the database (%.0f s left): %s",
            left_s,
            cause,
        )
        time.sleep(min(wait_s, left_s))  # a process's start-up wait, not an actor's
        wait_s = min(wait_s * 2, most_wait_s)
    return None
