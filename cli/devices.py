"""`mdmq devices import FILE`: enroll a fleet from a CSV or JSON Lines file, in batches of up to 10,000 rows
stored set-based as the API's batch stores them; bad rows are refused with their line and reason, the good
ones are stored.

CSV: a header row naming the columns `id`, `platform`, `provider`, `token`, `pushMagic`, `topic`, `labels`
(labels separated by `;`); empty cells are absent. JSON Lines: one object a line, with the API's fields.
The file is chosen by its extension (`.csv`, `.jsonl`/`.ndjson`), else by its first character (`{`: JSON).

Exit codes: 0 every row stored, 1 some rows refused, 3 the database refused, 64 usage (an unreadable file,
a malformed organization id).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.output import console, emit_json, fail
from config import load_settings
from models.enums import Actor
from models.ids import is_organization_id
from models.store import ensure_organization
from workers.actors import declare_actors
from workers.app import App
from workers.services.devices import MAX_PER_BATCH, Imported, RowProblem, import_devices

EXIT_REFUSED_ROWS = 1
EXIT_USAGE = 64
REFUSALS_SHOWN = 50

devices = typer.Typer(no_args_is_help=True, help="Devices: enroll a fleet, restore push tokens.")


@dataclass
class Tally:
    created: int = 0
    updated: int = 0
    refused: list[dict[str, Any]] = field(default_factory=list)  # line, id, field, reason


@devices.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(help="A CSV file with a header row, or JSON Lines.")],
    *,
    org: Annotated[
        str, typer.Option("--org", help="The organization the devices enroll in (created if new).")
    ],
    batch: Annotated[
        int, typer.Option("--batch", min=1, max=MAX_PER_BATCH, help="Rows per transaction.")
    ] = MAX_PER_BATCH,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout, for scripts.")] = False,
) -> None:
    """Enroll (or update, as Apple's TokenUpdate) the devices of FILE; print how many were stored and each
    refused row's line and reason. Exit 1 when some were refused."""
    if not is_organization_id(org):
        fail(f"--org {org!r} is not an organization id (24 hex, or 3+ letters, digits, -)", EXIT_USAGE)
    rows = _rows(file)
    total = _count_rows(file)
    app = App(load_settings())
    tally = Tally()
    try:
        with app.session() as session:
            ensure_organization(session, organization_id=org)
        enqueue = declare_actors(app).enqueue_ids
        with _progress(enabled=not as_json, total=total) as advance:
            for lines, chunk in _batches(rows, batch):
                rows_of = list(zip(lines, chunk, strict=True))
                readable = [(line, row) for line, row in rows_of if not isinstance(row, Unreadable)]
                tally.refused += [
                    {"line": line, "id": None, "field": "row", "reason": row.reason}
                    for line, row in rows_of
                    if isinstance(row, Unreadable)
                ]
                with app.session() as session:
                    imported = import_devices(
                        session, organization_id=org, rows=[row for _, row in readable], actor=Actor.ops
                    )
                enqueue(list(imported.enrolled.release))  # once committed
                _add(tally, imported, [line for line, _ in readable])
                advance(len(chunk))
    finally:
        app.close()
    _print(tally, as_json=as_json)
    if tally.refused:
        raise typer.Exit(EXIT_REFUSED_ROWS)


def _add(tally: Tally, imported: Imported, lines: list[int]) -> None:
    tally.created += len(imported.enrolled.created)
    tally.updated += len(imported.enrolled.updated)
    tally.refused += [_refusal(lines[p.index], p) for p in imported.problems]


def _refusal(line: int, problem: RowProblem) -> dict[str, Any]:
    return {"line": line, "id": problem.device_id, "field": problem.field, "reason": problem.reason}


@dataclass(frozen=True)
class Unreadable:
    """A line that is no row at all (not UTF-8, or not CSV): refused with its line, as a bad row is."""

    reason: str


NOT_UTF8 = Unreadable("not UTF-8 text")


def _rows(file: Path) -> Iterator[tuple[int, Any]]:
    """(line, row) of the file; a line that cannot be read is a row that is refused, not the import's end."""
    try:
        handle = file.open("rb")
        first = handle.read(1)
        handle.seek(0)
    except OSError as e:
        fail(f"{file}: cannot be read ({type(e).__name__})", EXIT_USAGE)
    suffix = file.suffix.lower()
    if suffix in (".jsonl", ".ndjson") or (suffix != ".csv" and first == b"{"):
        return _json_lines(handle)
    return _csv_rows(handle)


def _json_lines(handle: BinaryIO) -> Iterator[tuple[int, Any]]:
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield number, NOT_UTF8
            except json.JSONDecodeError:
                yield number, "not a JSON object"  # refused by the row check: "Input should be an object"


def _csv_rows(handle: BinaryIO) -> Iterator[tuple[int, Any]]:
    """The rows of a CSV file. A line that is not UTF-8 is refused and read as an empty line (which the
    reader skips); a row the reader cannot parse (a field beyond its limit) is refused with its line."""
    undecodable: list[int] = []
    read = 0

    def lines() -> Iterator[str]:
        nonlocal read
        for raw in handle:
            read += 1
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                undecodable.append(read)
                yield "\n"

    with handle:
        reader = csv.DictReader(lines())
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                yield from ((line, NOT_UTF8) for line in undecodable)
                undecodable.clear()
                yield read, Unreadable(f"not a CSV row ({e})")
                continue
            yield from ((line, NOT_UTF8) for line in undecodable)
            undecodable.clear()
            cells = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
            if "labels" in cells:
                cells["labels"] = [label.strip() for label in cells["labels"].split(";") if label.strip()]
            yield reader.line_num, cells
        yield from ((line, NOT_UTF8) for line in undecodable)


def _count_rows(file: Path) -> int:
    """Rows in the file, for the progress bar: its lines, less a CSV's header."""
    with file.open("rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return max(lines - (1 if file.suffix.lower() == ".csv" else 0), 0)


def _batches(rows: Iterator[tuple[int, Any]], size: int) -> Iterator[tuple[list[int], list[Any]]]:
    while chunk := list(islice(rows, size)):
        yield [line for line, _ in chunk], [row for _, row in chunk]


@contextmanager
def _progress(*, enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """A Rich progress bar of the rows imported; nothing when printing JSON."""
    if not enabled:
        yield lambda rows: None
        return
    columns = (TextColumn("devices imported"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("import", total=total)
        yield lambda rows: progress.advance(task, rows)


def _print(tally: Tally, *, as_json: bool) -> None:
    tally.refused.sort(key=lambda r: r["line"])
    stored = tally.created + tally.updated
    if as_json:
        emit_json(
            {"stored": stored, "created": tally.created, "updated": tally.updated, "refused": tally.refused}
        )
        return
    typer.echo(
        f"stored {stored} device(s) ({tally.created} enrolled, {tally.updated} updated), "
        f"refused {len(tally.refused)}"
    )
    for r in tally.refused[:REFUSALS_SHOWN]:
        typer.echo(f"  line {r['line']}: {r['id'] or '-'} {r['field']}: {r['reason']}")
    if len(tally.refused) > REFUSALS_SHOWN:
        typer.echo(f"  … and {len(tally.refused) - REFUSALS_SHOWN} more (--json lists them all)")


def register(app: typer.Typer) -> None:
    app.add_typer(devices, name="devices")
