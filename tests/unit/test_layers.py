"""The layers and the store boundary: the import contracts in pyproject.toml hold, every product module sits
in a layer, the entry points load no sandbox, and no SQL is written outside models/."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tokenize
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The packages of the production distribution; the sandbox is a separate one.
PRODUCT = ("api", "cli", "config", "models", "scheduler", "workers")
# Where SQL must not be written: everything of the product but models/.
OUTSIDE_MODELS = tuple(p for p in PRODUCT if p != "models")

# A statement in a string: uppercase keywords in the shape of a statement, so that prose which names one ("the
# INSERT fails", "one conditional UPDATE") passes.
_STATEMENT = re.compile(
    r"\bSELECT\s+(?:DISTINCT\s+)?[\w.*\"(),{}\s]{1,300}?\s+FROM\s+[\w\"({]"
    r"|\bSELECT\s+(?:\d+|\*|NULL|TRUE|FALSE)\b"
    r"|\bINSERT\s+INTO\s+[\w\"{]"
    r"|\bUPDATE\s+[\w.\"{}]+\s+SET\s"
    r"|\bDELETE\s+FROM\s+[\w\"{]"
    r"|\bWITH\s+\w+\s+AS\s*\(\s*(?:SELECT|INSERT|UPDATE|DELETE)\b"
)
# Query building and execution in code (strings and comments blanked out).
_QUERY_CODE = re.compile(
    r"\b(?:sa|sqlalchemy|sqlmodel)\.(?:text|select|insert|update|delete|case|func|literal_column)\b"
    r"|(?<![\w.])(?:select|insert|update|delete)\(\s*[A-Z]\w*"  # select(Table)
    r"|(?<![\w.])col\(\s*[A-Z]\w*\."  # sqlmodel's col(Table.column)
    r"|(?<![\w.])func\.(?:count|max|min|sum|now|coalesce)\("
    r"|\b\w*(?:session|conn|connection|engine)\w*(?:\(\))?\.(?:exec|execute|exec_driver_sql|scalars?|scalar_one)\("
    r"|(?<![\w.])s\.(?:exec|execute|scalars?|scalar_one)\("
    # The ORM's reads and writes are statements too: rows are fetched and stored by models/store/.
    r"|\b\w*session\w*\.(?:get|add|add_all|delete|merge|query|refresh)\("
    r"|(?<![\w.])s\.(?:add|add_all|delete|merge|query|refresh)\(|(?<![\w.])s\.get\(\s*[A-Z]"
)


def test_the_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.exists(), "import-linter is a dev dependency: pip install -e '.[dev]'"
    result = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_product_module_sits_in_a_layer() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert set(PRODUCT) <= set(config["root_packages"])
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    placed = {name.strip().strip("()") for layer in layers for name in re.split(r"[|:]", layer)}

    def in_a_layer(module: str) -> bool:
        return any(module == name or module.startswith(name + ".") for name in placed)

    outside, importing_containers = [], []
    for module, path in _modules(PRODUCT):
        if in_a_layer(module):
            continue
        if any(name.startswith(module + ".") for name in placed):
            # A package holding layers (workers): its __init__ must import no mdmq, or it escapes them.
            if _imported_roots(path) & {*PRODUCT, "sandbox"}:
                importing_containers.append(module)
            continue
        outside.append(module)
    assert not outside, f"modules in no layer of [tool.importlinter]: {outside}"
    assert not importing_containers, f"packages that hold layers and import mdmq: {importing_containers}"


def test_the_entry_points_load_no_sandbox() -> None:
    """The sandbox is another distribution: the `mdmq` command, the API, the scheduler and the workers start
    without it (the demo and the sandbox commands import it when they run)."""
    code = (
        "import sys, cli.main, api.app, scheduler.__main__, workers.main\n"
        "print(sorted(m for m in sys.modules if m.partition('.')[0] == 'sandbox'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_no_sql_outside_models() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text}"
        for _, path in _modules(OUTSIDE_MODELS)
        for line, text in sql_in(path.read_text())
    ]
    assert not found, "SQL outside models/ (put it behind a function in models/store/):\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        'QUERY = "SELECT id, status FROM deployment WHERE id = :id"\n',
        'sql = """\n    SELECT d.id\n      FROM deployment d\n"""\n',
        'ping = "SELECT 1"\n',
        "q = f'INSERT INTO {table} (id) VALUES (:id)'\n",
        'q = "UPDATE deployment SET status = :status"\n',
        'q = "DELETE FROM scheduler_run"\n',
        "session.connection().execute(statement)\n",
        "rows = s.exec(statement)\n",
        "self._session.execute(statement)\n",
        "rows = session.scalars(statement)\n",
        "statement = sa.text(raw)\n",
        "statement = select(Deployment).where(col(Deployment.id).in_(ids))\n",
        "statement = sa.update(RUNS).values(**values)\n",
        "n = func.count()\n",
        "organization = session.get(Organization, deployment.organization_id)\n",
        "s.add(row)\n",
    ],
)
def test_the_scan_finds_sql(source: str) -> None:
    assert sql_in(source)


@pytest.mark.parametrize(
    "source",
    [
        '"""Refused as invalid input (400) rather than failing the INSERT (500)."""\n',
        '"""Every other report is one conditional UPDATE. Select the devices from the list."""\n',
        '"""Locks the rows (SELECT … FOR UPDATE) and updates them; delete from the queue on success."""\n',
        '_METHODS = frozenset({"GET", "POST", "DELETE"})\n',
        "# SELECT id FROM deployment, in a comment\n",
        "chosen = selectors.select(timeout)\n",
        "result = executor.submit(job)\n",
        "rows = store.select_due(session, limit=10)\n",
        "update(values)\n",
        'route = scope.get("route")\n',
        "session.commit()\n",
    ],
)
def test_the_scan_passes_prose_and_other_code(source: str) -> None:
    assert not sql_in(source)


def sql_in(source: str) -> list[tuple[int, str]]:
    """(line, text) of each SQL statement in a string and each query built or executed in code."""
    lines = source.splitlines()
    code = list(source)
    found: list[tuple[int, str]] = []
    starts = [0]
    for text in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(text))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in (tokenize.STRING, tokenize.COMMENT):
            continue
        if token.type == tokenize.STRING:
            for match in _STATEMENT.finditer(token.string):
                line = token.start[0] + token.string.count("\n", 0, match.start())
                found.append((line, lines[line - 1].strip()))
        begin = starts[token.start[0] - 1] + token.start[1]
        end = starts[token.end[0] - 1] + token.end[1]
        code[begin:end] = [c if c == "\n" else " " for c in code[begin:end]]
    blanked = "".join(code)
    for match in _QUERY_CODE.finditer(blanked):
        line = blanked.count("\n", 0, match.start()) + 1
        found.append((line, lines[line - 1].strip()))
    return sorted(set(found))


def _modules(packages: tuple[str, ...]) -> list[tuple[str, Path]]:
    modules = []
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return modules


def _imported_roots(path: Path) -> set[str]:
    source = path.read_text()
    return set(re.findall(r"^\s*(?:from|import)\s+(\w+)", source, flags=re.MULTILINE)) - {"__future__"}
