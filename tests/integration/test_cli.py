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


def test_a_table_piped_to_a_file_or_a_pager_is_not_cut_at_80_columns(tmp_path: Path) -> None:
    env = {"MDMQ_DATABASE_URL": f"sqlite:///{tmp_path / 'wide.db'}"}
    assert run_mdmq("db", "upgrade", env=env, timeout_s=120, cwd=tmp_path).returncode == 0
    org = "an-organization-whose-id-is-longer-than-a-terminal-of-eighty-columns-" + "x" * 40
    created = run_mdmq(
        "token", "create", "--org", org, "--create-org", "--permission", "mdm.deployment.get",
        env=env, timeout_s=60, cwd=tmp_path,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr

    listed = run_mdmq("token", "list", env=env, timeout_s=60, cwd=tmp_path)  # stdout is a pipe here

    assert listed.returncode == 0, listed.stderr
    assert [line for line in listed.stdout.splitlines() if org in line], listed.stdout
    assert max(map(len, listed.stdout.splitlines())) > 80


def test_more_urgent_threads_than_the_setting_allows_is_refused_before_anything_runs(tmp_path: Path) -> None:
    env = {"MDMQ_DATABASE_URL": f"sqlite:///{tmp_path / 'never.db'}", "MDMQ_BROKER_URL": "stub://"}

    result = run_mdmq("worker", "--urgent-threads", "65", env=env, timeout_s=60, cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    said = " ".join(result.stderr.replace("│", " ").split())  # the usage box wraps the line
    assert "Invalid value for '--urgent-threads'" in said
    assert "less than or equal to 64" in said
    assert not (tmp_path / "never.db").exists()
