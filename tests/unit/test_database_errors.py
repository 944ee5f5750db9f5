"""Database errors as code outside models/ sees them: caught as DATABASE_ERRORS, told apart by
is_connection_error."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.database import DATABASE_ERRORS, create_engine, is_connection_error


def test_a_database_that_cannot_be_opened_is_a_connection_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").touch()  # a missing directory would be created: a file cannot hold one
    engine = create_engine(f"sqlite:///{tmp_path / 'a-file' / 'mdmq.db'}")
    with pytest.raises(DATABASE_ERRORS) as caught:
        engine.connect()
    assert is_connection_error(caught.value)


def test_a_statement_that_would_fail_again_is_not_a_connection_error() -> None:
    engine = create_engine("sqlite://")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        connection.exec_driver_sql("INSERT INTO t VALUES (1)")
    with pytest.raises(DATABASE_ERRORS) as caught, engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO t VALUES (1)")
    assert not is_connection_error(caught.value)
    assert not is_connection_error(ValueError("not a database error"))
