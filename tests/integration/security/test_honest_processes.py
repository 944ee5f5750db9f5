"""Honest processes: a wrong database or broker is named for what it is, in one line, without a secret."""

from __future__ import annotations

import logging
import socket

import pytest
import requests
from sqlalchemy.engine import make_url

from config.settings import Settings
from tests.integration.api.conftest import serving
from workers.app import App

PASSWORD = "hunter2-not-a-real-one"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def database_url(postgres_url: str, **parts: object) -> str:
    url = make_url(postgres_url).set(password=PASSWORD, **parts)  # type: ignore[arg-type]
    return url.render_as_string(hide_password=False)


def assert_down(
    answer: requests.Response, caplog: pytest.LogCaptureFixture, name: str, cause: str, up: str
) -> None:
    assert answer.status_code == 503
    body = answer.json()
    assert body["status"] is False
    assert body["data"][up] == "up"
    assert body["data"][name].startswith(f"down: {cause}")
    warnings = [r for r in caplog.records if r.name == "api.app" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert name in warnings[0].getMessage()
    assert cause in warnings[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records), "no traceback in the logs"
    assert PASSWORD not in answer.text
    assert PASSWORD not in caplog.text


def test_readyz_names_a_missing_database(postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    url = database_url(postgres_url, database="mdmq_no_such_database")
    app = App(Settings(database_url=url, broker_url="stub://"))
    with caplog.at_level(logging.INFO), serving(app) as base_url:
        answer = requests.get(base_url + "/readyz", timeout=30)
    app.close()
    assert_down(answer, caplog, "database", "database missing", up="broker")
    assert "mdmq_no_such_database" in answer.json()["data"]["database"]


def test_readyz_names_an_unreachable_database(postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    app = App(Settings(database_url=database_url(postgres_url, port=closed_port()), broker_url="stub://"))
    with caplog.at_level(logging.INFO), serving(app) as base_url:
        answer = requests.get(base_url + "/readyz", timeout=30)
    app.close()
    assert_down(answer, caplog, "database", "unreachable", up="broker")


def test_readyz_names_an_unreachable_broker(postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    broker_url = f"redis://:{PASSWORD}@127.0.0.1:{closed_port()}/0"
    app = App(Settings(database_url=postgres_url, broker_url=broker_url))
    with caplog.at_level(logging.INFO), serving(app) as base_url:
        answer = requests.get(base_url + "/readyz", timeout=30)
    app.close()
    assert_down(answer, caplog, "broker", "unreachable", up="database")


def test_readyz_answers_200_when_both_answer(postgres_url: str) -> None:
    app = App(Settings(database_url=postgres_url, broker_url="redis://127.0.0.1:6379/0"))
    with serving(app) as base_url:
        answer = requests.get(base_url + "/readyz", timeout=30)
    app.close()
    assert answer.status_code == 200
    assert answer.json() == {"status": True, "data": {"database": "up", "broker": "up"}}


def test_readyz_names_a_refused_login(postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    url = database_url(postgres_url, username="mdmq_no_such_role")
    app = App(Settings(database_url=url, broker_url="stub://"))
    with caplog.at_level(logging.INFO), serving(app) as base_url:
        answer = requests.get(base_url + "/readyz", timeout=30)
    app.close()
    assert_down(answer, caplog, "database", "authentication failed", up="broker")
