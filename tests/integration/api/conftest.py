"""The API served by uvicorn on a loopback port in a thread, and a client that speaks real HTTP to it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import uvicorn
from sqlalchemy.engine import Engine

from api.app import create_app
from config.settings import Settings
from tests.helpers import wait_until
from workers.app import App


class Client:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
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
    server = uvicorn.Server(uvicorn.Config(create_app(mdmq), host="127.0.0.1", port=0, log_config=None))
    thread = threading.Thread(target=server.run, name="mdmq-api-test", daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "the API to listen")
    port = server.servers[0].sockets[0].getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}")
    yield client
    client.http.close()
    server.should_exit = True
    thread.join(timeout=20)
