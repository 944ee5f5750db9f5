"""Runs the Alembic migrations programmatically: `mdmq db upgrade`, the Procfile's `release`, the tests."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from models.database import CONNECT_TIMEOUT_S, DRIVER_ERRORS, database_cause

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


@dataclass(frozen=True)
class Schema:
    """Where a database stands: its revisions (none before the first upgrade) and the newest ones."""

    current: frozenset[str]
    newest: frozenset[str]

    @property
    def is_newest(self) -> bool:
        return self.current == self.newest


@dataclass(frozen=True)
class Revision:
    id: str
    title: str  # the first line of the migration's docstring
    is_newest: bool


def schema(database_url: str, *, connect_timeout_s: int = CONNECT_TIMEOUT_S) -> Schema:
    """The database's revisions beside the newest; raises the driver's error when it cannot be reached."""
    timeout = {} if database_url.startswith("sqlite") else {"connect_timeout": connect_timeout_s}
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool, connect_args=timeout)
    try:
        with engine.connect() as connection:
            current = frozenset(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()
    return Schema(current=current, newest=frozenset(_scripts(database_url).get_heads()))


def history(database_url: str) -> list[Revision]:
    """Every revision, newest first, from the migration scripts alone (the database is not asked)."""
    scripts = _scripts(database_url)
    newest = set(scripts.get_heads())
    return [
        Revision(
            id=script.revision,
            title=script.doc.strip().splitlines()[0] if script.doc.strip() else "",
            is_newest=script.revision in newest,
        )
        for script in scripts.walk_revisions()
    ]


def _scripts(database_url: str) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(database_url))


def is_current(database_url: str) -> bool:
    """Whether the database is at the newest schema (False too when it cannot be reached yet)."""
    return schema_cause(database_url) is None


def schema_cause(database_url: str) -> str | None:
    """Why the database is not at the newest schema, in one line (`unreachable: …`, `database missing: …`,
    `authentication failed: …`, `schema behind: …`); None when it is."""
    try:
        state = schema(database_url)
    except DRIVER_ERRORS as e:
        return database_cause(e)
    if state.is_newest:
        return None
    current, newest = state.current, state.newest
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
