"""What the `mdmq` command prints: progress bars and tables (rich) for a person, JSON for scripts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from models.statuses import STATUSES, Kind, Status

if TYPE_CHECKING:
    from cli.demo import DemoResult

# Piped or redirected, Rich would cut every line at 80 columns; a table is then as wide as its widest row.
PIPED_WIDTH = 10_000


def make_console(*, stderr: bool = False) -> Console:
    """A Rich console as wide as the terminal; piped (`| less`, `> file`), as wide as its lines, unless
    COLUMNS says otherwise."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=PIPED_WIDTH if piped else None)


console = make_console()


def fail(message: str, code: int) -> NoReturn:
    """Say why on stderr, as `mdmq: <message>`, and exit with `code`."""
    typer.echo(f"mdmq: {message}", err=True)
    raise typer.Exit(code)


def emit_json(data: Any) -> None:
    """`data` as one line of JSON on stdout; times as the API writes them (ISO 8601, `Z` for UTC)."""
    typer.echo(json.dumps(data, default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


@contextmanager
def demo_progress(*, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    if not enabled:
        yield lambda done, total: None
        return
    columns = (
        TextColumn("deployments in their final status"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("rollout", total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


def print_demo(result: DemoResult) -> None:
    table = Table(
        title=f"{result.total:,} deployments to {result.devices:,} devices in {result.seconds:.1f} s"
    )
    table.add_column("status")
    kinds = [kind for kind in Kind if kind.value in result.deployments]
    for kind in kinds:
        table.add_column(kind.value.replace("_", " "), justify="right")
    seen = {status for counts in result.deployments.values() for status in counts}
    for status in (s for s in Status if s.value in seen):
        cells = [_cell(result, kind, status) for kind in kinds]
        table.add_row(status.value, *cells)
    console.print(table)
    for example in result.examples:
        console.print(f"  {example['count']:>5}  {example['status']}: {example['error']}")
    verdict = (
        "every deployment reached" if result.ok else f"only {result.matched:,} of {result.total:,} reached"
    )
    console.print(f"{verdict} the status its simulated device dictates")


def _cell(result: DemoResult, kind: Kind, status: Status) -> str:
    if status not in STATUSES[kind]:
        return ""
    return f"{result.deployments.get(kind.value, {}).get(status.value, 0):,}"
