"""Where the real services of the integration tests are, and how a test asks for one.

On a laptop without a service its tests skip; in CI (`CI=true`) they fail, because a skipped integration test
would hide a missing install step.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

POSTGRES_ADMIN_URL = os.environ.get(
    "MDMQ_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("MDMQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
RABBITMQ_URL = os.environ.get("MDMQ_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


def require(url: str, what: str) -> None:
    """Skip (or in CI fail) unless something listens where `url` points."""
    parts = urlsplit(url.replace("postgresql+psycopg", "postgresql"))
    host, port = parts.hostname or "127.0.0.1", parts.port
    assert port is not None, url
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as e:
        if CI:
            raise RuntimeError(f"{what} is not reachable at {host}:{port} in CI: {e}") from e
        pytest.skip(f"{what} is not reachable at {host}:{port}")


@contextmanager
def new_postgres_database(prefix: str) -> Iterator[str]:
    """A PostgreSQL database of its own, empty (no schema), dropped afterwards; yields its URL."""
    require(POSTGRES_ADMIN_URL, "PostgreSQL")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
