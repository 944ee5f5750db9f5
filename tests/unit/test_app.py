"""The composition root builds its parts from Settings once per process; a pool never crosses a fork."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from dramatiq.brokers.stub import StubBroker

from config.settings import load_settings
from models.migrations.runner import upgrade
from models.store import ensure_organization
from models.tables import Organization
from workers.app import App


@pytest.fixture
def app(tmp_path: Path) -> App:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade(url)
    return App(load_settings(database_url=url))


def test_the_embedded_default_builds_an_in_process_broker(app: App) -> None:
    assert isinstance(app.broker, StubBroker)
    assert app.broker is app.broker


def test_the_engine_is_built_once_per_process_and_anew_after_a_fork(app: App) -> None:
    parent_engine = app.engine
    assert app.engine is parent_engine

    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process with threads; forking is exactly what workers do.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: it must get an engine of its own, and it must work
        try:
            fresh = app.engine is not parent_engine
            with app.session() as session:
                ensure_organization(session, organization_id="forked-child")
            os.write(write, b"fresh" if fresh else b"shared")
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"fresh"
    with app.session() as session:
        assert session.get(Organization, "forked-child") is not None


def test_a_session_commits_when_the_block_ends_and_rolls_back_when_it_raises(app: App) -> None:
    with app.session() as session:
        ensure_organization(session, organization_id="kept")

    def fail_half_way() -> None:
        with app.session() as session:
            ensure_organization(session, organization_id="dropped")
            raise RuntimeError("the job failed half-way")

    with pytest.raises(RuntimeError):
        fail_half_way()

    with app.session() as session:
        assert session.get(Organization, "kept") is not None
        assert session.get(Organization, "dropped") is None
