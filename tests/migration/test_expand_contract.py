"""Every migration only expands the schema (models/migrations/README.md) unless it declares itself a contract
step with a module-level `CONTRACT = "why it is safe now"`: the previous release's code must keep working
against the migrated database during a rolling deploy."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

VERSIONS = Path(__file__).resolve().parents[2] / "models" / "migrations" / "versions"
MIGRATIONS = sorted(VERSIONS.glob("*.py"))

_DROPS = {"drop_column", "drop_table", "rename_table"}
_CONTRACT_SQL = re.compile(r"\b(DROP\s+(COLUMN|TABLE)|RENAME\b|SET\s+NOT\s+NULL)", re.IGNORECASE)


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_false(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _not_null_without_default(call: ast.Call) -> bool:
    return _is_false(_keyword(call, "nullable")) and _keyword(call, "server_default") is None


def _called(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _contract_operations(node: ast.AST) -> list[str]:
    """What in `node` would break code that reads the schema as it was before."""
    found: list[str] = []
    for child in ast.walk(node):
        if isinstance(child, ast.Call):
            name = _called(child)
            if name in _DROPS:
                found.append(f"line {child.lineno}: {name}")
            elif name == "alter_column" and _keyword(child, "new_column_name") is not None:
                found.append(f"line {child.lineno}: alter_column renames a column")
            elif name == "alter_column" and _not_null_without_default(child):
                found.append(f"line {child.lineno}: alter_column sets NOT NULL without a server_default")
            elif name == "add_column":
                columns = [a for a in child.args if isinstance(a, ast.Call) and _called(a) == "Column"]
                if any(_not_null_without_default(column) for column in columns):
                    found.append(f"line {child.lineno}: add_column NOT NULL without a server_default")
        elif (
            isinstance(child, ast.Constant)
            and isinstance(child.value, str)
            and _CONTRACT_SQL.search(child.value)
        ):
            found.append(f"line {child.lineno}: SQL that drops, renames or sets NOT NULL")
    return sorted(found, key=lambda text: int(text.split(":")[0].removeprefix("line ")))


def upgrade_contract_operations(source: str) -> list[str]:
    """The contract operations `upgrade()` and the module's helpers perform (`downgrade()` may drop what its
    upgrade added); empty for a module that declares `CONTRACT`."""
    module = ast.parse(source)
    for statement in module.body:
        value: ast.expr | None
        if isinstance(statement, ast.Assign):
            targets, value = statement.targets, statement.value
        elif isinstance(statement, ast.AnnAssign):
            targets, value = [statement.target], statement.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "CONTRACT" for t in targets):
            if not (isinstance(value, ast.Constant) and isinstance(value.value, str) and value.value.strip()):
                raise ValueError("CONTRACT says why the step is safe now, as a non-empty string")
            return []
    return [
        found
        for statement in module.body
        if not (isinstance(statement, ast.FunctionDef) and statement.name == "downgrade")
        for found in _contract_operations(statement)
    ]


def test_the_migrations_are_found() -> None:
    assert len(MIGRATIONS) >= 7


@pytest.mark.parametrize("migration", MIGRATIONS, ids=[m.stem for m in MIGRATIONS])
def test_a_migration_only_expands_unless_it_declares_a_contract_step(migration: Path) -> None:
    assert upgrade_contract_operations(migration.read_text()) == [], (
        f"{migration.name} would break the previous release's code during a rolling deploy; "
        "expand now and contract in a later release (models/migrations/README.md), "
        'or declare CONTRACT = "why it is safe now"'
    )


CARELESS = """
import sqlalchemy as sa
from alembic import op


def upgrade() -> None:
    op.add_column("device", sa.Column("serial", sa.String(64), nullable=True))
    with op.batch_alter_table("deployment") as batch:
        batch.drop_column("legacy")
        batch.alter_column("state", new_column_name="status")
        batch.alter_column("kind", nullable=False)
        batch.add_column(sa.Column("weight", sa.Integer(), nullable=False))
        batch.add_column(sa.Column("urgent", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.drop_table("old_table")
    op.execute("ALTER TABLE device RENAME COLUMN token TO push_token")
    op.execute(sa.text("ALTER TABLE device ALTER COLUMN push_magic SET NOT NULL"))


def downgrade() -> None:
    op.drop_column("device", "serial")
"""


def test_a_careless_migration_fails() -> None:
    assert upgrade_contract_operations(CARELESS) == [
        "line 9: drop_column",
        "line 10: alter_column renames a column",
        "line 11: alter_column sets NOT NULL without a server_default",
        "line 12: add_column NOT NULL without a server_default",
        "line 14: drop_table",
        "line 15: SQL that drops, renames or sets NOT NULL",
        "line 16: SQL that drops, renames or sets NOT NULL",
    ]


def test_a_declared_contract_step_passes_and_must_say_why() -> None:
    declared = 'CONTRACT = "legacy: unread since the release before"\n'
    assert upgrade_contract_operations(declared + CARELESS) == []
    with pytest.raises(ValueError, match="non-empty string"):
        upgrade_contract_operations('CONTRACT = ""\n' + CARELESS)
