"""`mdmq secrets`: the key that encrypts push credentials and push magic at rest: a new key, rotation, and
the test decryption each long-running process does at start.

Exit codes: 0 done, 1 rows no key of the ring decrypts (left as they are), 2 configuration, 3 the database
refused, 64 usage (no key configured, or plaintext writes still on).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Annotated

import typer

from cli.output import emit_json, fail
from config import load_settings
from config.settings import Settings
from models.secrets import CANNOT_DECRYPT, KeyRing
from models.store.audit import record_secret_rotation
from models.store.secrets import SECRET_COLUMNS, KeyCheck, check_key, reseal_page
from workers.app import App

EXIT_UNDECRYPTABLE = 1
EXIT_USAGE = 64
PAGE = 1_000  # rows per transaction: a large fleet's devices are not locked at once

log = logging.getLogger(__name__)

secrets = typer.Typer(no_args_is_help=True, help="The key that encrypts secrets at rest.")


@secrets.command("generate-key")
def generate_key() -> None:
    """Print a new key for MDMQ_SECRET_KEY (put it first: the newest key encrypts)."""
    typer.echo(KeyRing.generate_key())


@secrets.command("rotate")
def rotate(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout, for scripts.")] = False,
) -> None:
    """Encrypt every push credential and push magic under the newest key of MDMQ_SECRET_KEY: plaintext rows
    and rows of an older key. Prints how many rows it re-encrypted; rows already under the newest key are
    left. Safe to run while mdmq runs, and again."""
    app = App(load_settings())
    try:
        ring = _writing_ring(app)
        touched: dict[str, Counter[str]] = {}
        undecryptable = 0
        for table in SECRET_COLUMNS:
            touched[table], left = _reseal_table(app, ring, table)
            undecryptable += left
        _audit(app, ring, touched)
    finally:
        app.close()
    _report(touched, undecryptable, as_json=as_json)
    if undecryptable:
        raise typer.Exit(EXIT_UNDECRYPTABLE)


def _writing_ring(app: App) -> KeyRing:
    ring = app.key_ring
    if ring is None:
        fail(
            "no key to encrypt with: set MDMQ_SECRET_KEY (`mdmq secrets generate-key` makes one)", EXIT_USAGE
        )
    if ring.plaintext_writes:
        fail(
            "MDMQ_SECRET_PLAINTEXT_WRITES is on: a process that cannot decrypt may still run. Turn it off "
            "once none is left, then rotate",
            EXIT_USAGE,
        )
    return ring


def _reseal_table(app: App, ring: KeyRing, table: str) -> tuple[Counter[str], int]:
    touched: Counter[str] = Counter()
    undecryptable = 0
    after: str | None = ""
    while after is not None:
        with app.session() as session:
            page = reseal_page(session.connection(), ring=ring, table=table, after_id=after, limit=PAGE)
        touched.update(page.touched)
        undecryptable += page.undecryptable
        after = page.last_id
    return touched, undecryptable


def _audit(app: App, ring: KeyRing, touched: dict[str, Counter[str]]) -> None:
    """One `secrets.rotated` event per organization whose rows moved, naming the key's id."""
    rows: Counter[str] = Counter()
    for by_organization in touched.values():
        rows.update(by_organization)
    with app.session() as session:
        record_secret_rotation(session, rows_by_organization=rows, key_id=ring.newest_key_id)


def _report(touched: dict[str, Counter[str]], undecryptable: int, *, as_json: bool) -> None:
    counts = {table: sum(by_organization.values()) for table, by_organization in touched.items()}
    if as_json:
        emit_json({"reencrypted": sum(counts.values()), **counts, "undecryptable": undecryptable})
        return
    typer.echo(
        f"re-encrypted {sum(counts.values())} rows under the newest key: "
        f"{counts['push_credential']} credentials, {counts['device']} push magics"
    )
    if undecryptable:
        typer.echo(
            f"mdmq: {undecryptable} rows no key decrypts were left as they are: add the key they were "
            "encrypted with to MDMQ_SECRET_KEY (after the newest) and rotate again",
            err=True,
        )


def check_key_at_start(settings: Settings) -> KeyCheck:
    """Decrypt one stored secret with the process's key and say so when it cannot: pushes that need an
    undecryptable secret are held, and the process runs on (a restart would change nothing)."""
    app = App(settings)
    try:
        with app.session() as session:
            found = check_key(session, ring=app.key_ring)
    finally:
        app.close()
    if found is KeyCheck.cannot_decrypt:
        log.error(
            "the secret key cannot decrypt the stored secrets: pushes that need them are held (%r) until the "
            "key they were encrypted with is in MDMQ_SECRET_KEY",
            CANNOT_DECRYPT,
        )
    elif app.key_ring is None:
        log.warning("no MDMQ_SECRET_KEY: secrets are written in plaintext (development only)")
    return found


def register(app: typer.Typer) -> None:
    app.add_typer(secrets, name="secrets")
