"""The `mdmq` command through its real entry point, as an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

MDMQ = [sys.executable, "-c", "from cli.main import main; main()"]


def _run(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MDMQ_")}
    return subprocess.run(
        [*MDMQ, *args], env=clean | env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_wrong_setting_is_one_clear_line_not_a_traceback(tmp_path: Path) -> None:
    result = _run("db", "upgrade", env={"MDMQ_DATABASE_URL": "nonsense://"}, cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "mdmq: invalid configuration: MDMQ_DATABASE_URL: expected sqlite:///PATH or "
        "postgresql+psycopg://USER@HOST:PORT/DB, got 'nonsense://'"
    ]


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"

    result = _run("db", "upgrade", env={"MDMQ_DATABASE_URL": url}, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "database at head" in result.stdout
    tables = set(sa.inspect(sa.create_engine(url)).get_table_names())
    assert {"deployment", "deployment_event", "device", "organization", "alembic_version"} <= tables
