"""Engines for PostgreSQL and SQLite, each tuned for mdmq's write pattern."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import Session

from models.secrets import KeyRing, attach_key_ring, make_private_directory, sqlite_path

log = logging.getLogger(__name__)

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DATABASE_ERRORS",
    "DRIVER_ERRORS",
    "Engine",
    "Session",
    "create_engine",
    "database_cause",
    "is_connection_error",
]

# What the database layer raises, for code outside models/ to catch without importing SQLAlchemy:
# `except DATABASE_ERRORS as e:`.
DATABASE_ERRORS: tuple[type[Exception], ...] = (sa_exc.SQLAlchemyError,)
# What the database itself (through its driver) refused: down, unreachable, no schema. Narrower than
# DATABASE_ERRORS, which also holds a statement mdmq built wrong: that is a bug, and keeps its traceback.
DRIVER_ERRORS: tuple[type[Exception], ...] = (sa_exc.DBAPIError,)


def is_connection_error(exc: BaseException) -> bool:
    """True when the database could not be reached or the connection was lost: a later try may succeed.
    False for an error a retry would repeat (a constraint, a bad statement)."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError))


# Seconds a new PostgreSQL connection may take before the database counts as unreachable.
CONNECT_TIMEOUT_S = 10
LOCK_TIMEOUT_S = 30  # the longest a statement waits for a row lock before it fails

# What the driver says, by what an operator does about it. psycopg gives a connection refused at log-in
# no SQLSTATE, so its message decides there; a refusal after log-in has one.
_CAUSES = (
    ("authentication failed", ("28P01", "28000"), ("authentication failed", "pg_hba.conf", 'role "')),
    ("database missing", ("3D000",), ('database "',)),
)


def database_cause(exc: BaseException) -> str:
    """What the database refused, in one line an operator can act on: `unreachable: …`, `database missing:
    …`, `authentication failed: …` or `refused: …`, then the driver's first line (no password: the driver
    never repeats one)."""
    driver_error = getattr(exc, "orig", None) or exc
    said = _first_line(str(driver_error)) or type(driver_error).__name__
    sqlstate = getattr(driver_error, "sqlstate", None)
    for kind, sqlstates, phrases in _CAUSES:
        if sqlstate in sqlstates or (sqlstate is None and any(p in said for p in phrases)):
            return f"{kind}: {said}"
    return f"{'unreachable' if is_connection_error(exc) else 'refused'}: {said}"


def _first_line(message: str) -> str:
    line = message.strip().splitlines()[0] if message.strip() else ""
    return line.removeprefix("connection failed: ").replace("FATAL:  ", "")


def create_engine(
    url: str, *, pool_size: int = 5, echo: bool = False, key_ring: KeyRing | None = None
) -> Engine:
    """An engine for `url`, encrypting and decrypting secrets with `key_ring` (None: written in plaintext).
    Call it in the process that uses it: a pool must never cross a fork."""
    engine = (
        _sqlite_engine(url, echo=echo) if url.startswith("sqlite") else _postgres_engine(url, pool_size, echo)
    )
    attach_key_ring(engine, key_ring)
    return engine


def _postgres_engine(url: str, pool_size: int, echo: bool) -> Engine:
    return sa.create_engine(
        url,
        echo=echo,
        # A failed statement's parameters can hold a push key or token: errors never carry them.
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        # A statement stuck behind a lock must not hold a worker thread for ever.
        # A host that drops packets must not hold a request or a start-up for ever: it is `unreachable`.
        connect_args={
            "options": f"-c lock_timeout={LOCK_TIMEOUT_S}s",
            "application_name": "mdmq",
            "connect_timeout": CONNECT_TIMEOUT_S,
        },
    )


def _sqlite_engine(url: str, *, echo: bool) -> Engine:
    in_memory = url in ("sqlite://", "sqlite:///:memory:")
    kwargs: dict[str, Any] = {
        "echo": echo,
        "hide_parameters": True,  # as on PostgreSQL: no secret in an error message
        "connect_args": {"check_same_thread": False, "timeout": 30},
    }
    if in_memory:
        # One shared connection, or every new connection would see a new empty database.
        kwargs["poolclass"] = sa.pool.StaticPool
    else:
        _create_private_file(sqlite_path(url))
    engine = sa.create_engine(url, **kwargs)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _create_private_file(path: Path | None) -> None:
    """Create the SQLite file mode 0600 in a directory created 0700, before SQLite creates it readable by
    all: it holds the push credentials. (Its -wal and -shm files take its mode.) An existing file is kept;
    a path that cannot be made is left for SQLite to refuse, as a connection error."""
    if path is None:
        return
    try:
        make_private_directory(path.parent)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as e:
        log.debug("cannot create %s: %s", path, e.strerror)


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the demo's worker threads read while one of them writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
