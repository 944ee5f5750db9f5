"""`alembic upgrade head` on an empty PostgreSQL and an empty SQLite gives exactly the models' schema, and
`downgrade base` takes it all away again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import models.tables  # noqa: F401
from models.migrations.runner import alembic_config, upgrade
from tests.services import new_postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with new_postgres_database("mdmq_migration") as url:
        yield url


def _differences(url: str) -> list[object]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, SQLModel.metadata)
    engine.dispose()
    return list(differences)


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    tables = set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    engine.dispose()
    return tables


def test_upgrade_head_equals_the_models(empty_database: str) -> None:
    upgrade(empty_database)

    assert _differences(empty_database) == []
    assert _tables(empty_database) == set(SQLModel.metadata.tables)


def test_downgrade_base_then_upgrade_again(empty_database: str) -> None:
    upgrade(empty_database)
    command.downgrade(alembic_config(empty_database), "base")
    assert _tables(empty_database) == set()

    upgrade(empty_database)
    assert _differences(empty_database) == []


def test_there_is_one_head() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1
