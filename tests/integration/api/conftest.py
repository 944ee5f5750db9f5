"""The API served as `mdmq api` serves it (api.server) on a loopback port in a thread, its /metrics on a port
of its own, and a client that speaks real HTTP to them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
import uvicorn
from sqlalchemy.engine import Engine

from api.app import create_app
from api.metrics import serve_metrics
from api.server import server_config
from config.settings import Settings
from tests.helpers import wait_until
from workers.app import App


class Client:
    def __init__(self, base_url: str, metrics_url: str) -> None:
        self.base_url = base_url
        self.metrics_url = metrics_url
        self.http = requests.Session()

    def get(self, path: str, **options: Any) -> requests.Response:
        return self.http.get(self.base_url + path, timeout=30, **options)

    def delete(self, path: str, **options: Any) -> requests.Response:
        return self.http.delete(self.base_url + path, timeout=30, **options)


@pytest.fixture
def mdmq(pg: Engine, postgres_url: str) -> Iterator[App]:
    app = App(Settings(database_url=postgres_url, broker_url="stub://"))
    yield app
    app.close()


@pytest.fixture
def client(mdmq: App) -> Iterator[Client]:
    metrics = serve_metrics(host="127.0.0.1", port=0)
    with serving(mdmq) as base_url:
        client = Client(base_url, f"http://127.0.0.1:{metrics.server_port}/metrics")
        yield client
        client.http.close()
    metrics.shutdown()
    metrics.server_close()


@contextmanager
def serving(app: App) -> Iterator[str]:
    """`mdmq api` on a loopback port, in a thread, for as long as the block runs: its base URL."""
    server = uvicorn.Server(server_config(create_app(app), app.settings, host="127.0.0.1", port=0))
    thread = threading.Thread(target=server.run, name="mdmq-api-test", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 20, "the API to listen")
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
