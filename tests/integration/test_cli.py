"""The `mdmq` command through its real entry point, as an operator runs it."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from tests.helpers import run_mdmq


def test_a_wrong_setting_is_one_clear_line_not_a_traceback(tmp_path: Path) -> None:
    result = run_mdmq("db", "upgrade", env={"MDMQ_DATABASE_URL": "nonsense://"}, timeout_s=120, cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "mdmq: invalid configuration: MDMQ_DATABASE_URL: expected sqlite:///PATH or "
        "postgresql+psycopg://USER@HOST:PORT/DB, got 'nonsense://'"
    ]


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"

    result = run_mdmq("db", "upgrade", env={"MDMQ_DATABASE_URL": url}, timeout_s=120, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "database at head" in result.stdout
    tables = set(sa.inspect(sa.create_engine(url)).get_table_names())
    assert {"deployment", "deployment_event", "device", "organization", "alembic_version"} <= tables
