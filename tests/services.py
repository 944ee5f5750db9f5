"""Where the real services of the integration tests are, and how a test asks for one.

On a laptop without a service its tests skip; in CI (`CI=true`) they fail, because a skipped integration test
would hide a missing install step.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest
import redis
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


class OwnRedis:
    """A Redis server of the test's own on a free port, as the machine's is configured (nothing kept on disk:
    a restart loses what it held), that the test may stop and start again on the same port without touching
    the machine's shared Redis."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if shutil.which("redis-server") is None:
            if CI:
                raise RuntimeError("redis-server is not installed in CI")
            pytest.skip("redis-server is not installed")
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self._process = subprocess.Popen([*command, "--appendonly", "no"], stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while not _pings(client):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test's Redis on port {self.port} did not answer in 10 s")
            threading.Event().wait(0.05)
        client.close()

    @property
    def stopped(self) -> bool:
        return self._process is None

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=30)
            self._process = None

    def __enter__(self) -> OwnRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
