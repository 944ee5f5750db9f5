"""`mdmq token create|list|revoke`: the API's bearer tokens, kept as their hash only, each create and revoke
in the organization's audit record.

Exit codes: 0 done, 1 nothing found (an unknown organization without --create-org, an unknown or revoked
token, no token to list), 2 configuration, 3 the database refused, 64 usage (a permission outside the
closed set, a malformed id or duration).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from api.representation import api_token
from cli.options import parse_duration
from cli.output import emit_json, fail, make_console
from config import load_settings
from models.ids import is_id, is_organization_id
from models.permissions import PERMISSIONS, unknown_permissions
from models.store import ensure_organization
from models.store.audit import TOKEN_CREATED, TOKEN_REVOKED, record_audit_event
from models.store.organizations import organization_exists
from models.store.tokens import (
    DEFAULT_LIFETIME,
    MAX_LIFETIME,
    UnknownPermission,
    create_token,
    get_token,
    list_tokens,
    revoke_token,
)
from models.tables import ApiToken
from models.types import utcnow
from workers.app import App

EXIT_NOTHING = 1
EXIT_USAGE = 64
ACTOR = "cli"  # the audit actor of what the command line does

tokens = typer.Typer(no_args_is_help=True, help="API tokens: create, list, revoke.")
console = make_console()
Json = Annotated[bool, typer.Option("--json", help="One JSON object on stdout, for scripts.")]


@tokens.command("create")
def create(
    *,
    org: Annotated[str, typer.Option("--org", help="The organization the token acts for.")],
    permission: Annotated[
        list[str],
        typer.Option("--permission", help=f"Repeatable; one of: {', '.join(sorted(PERMISSIONS))}."),
    ],
    expires_in: Annotated[
        str,
        typer.Option(
            "--expires-in",
            help=f"How long it is valid: 30d, 12h, 90m (at most {MAX_LIFETIME.days}d).",
        ),
    ] = f"{DEFAULT_LIFETIME.days}d",
    create_org: Annotated[
        bool, typer.Option("--create-org", help="Create the organization if it does not exist.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Create an API token and print it, once, as the last line: only its hash is stored."""
    if not is_organization_id(org):
        fail(f"--org {org!r} is not an organization id (24 hex, or 3+ letters, digits, -)", EXIT_USAGE)
    unknown = unknown_permissions(permission)
    if unknown:
        fail(str(UnknownPermission(unknown)), EXIT_USAGE)
    lifetime = parse_duration(expires_in, "--expires-in")
    if lifetime > MAX_LIFETIME:
        fail(f"--expires-in {expires_in}: at most {MAX_LIFETIME.days}d", EXIT_USAGE)
    app = App(load_settings())
    try:
        with app.session() as session:
            if not organization_exists(session, organization_id=org):
                if not create_org:
                    fail(f"no organization {org}: check the id, or --create-org to create it", EXIT_NOTHING)
                ensure_organization(session, organization_id=org)
            row, secret = create_token(
                session, organization_id=org, permissions=permission, lifetime=lifetime
            )
            detail = {
                "tokenId": row.id,
                "permissions": row.permissions,
                "lifetimeS": lifetime.total_seconds(),
            }
            record_audit_event(session, organization_id=org, actor=ACTOR, action=TOKEN_CREATED, detail=detail)
    finally:
        app.close()
    if as_json:
        emit_json(api_token(row) | {"token": secret})
        return
    until = f"{row.expires_at:%Y-%m-%d %H:%M} UTC"
    typer.echo(f"token {row.id} for {org}: {', '.join(row.permissions)}; expires {until}", err=True)
    typer.echo(secret)


@tokens.command("list")
def listing(
    org: Annotated[str | None, typer.Option("--org", help="Only this organization's.")] = None,
    as_json: Json = False,
) -> None:
    """Every token, revoked and expired ones included, newest first; never a token's secret (only its hash
    is stored)."""
    app = App(load_settings())
    try:
        with app.session() as session:
            rows = list_tokens(session, organization_id=org)
    finally:
        app.close()
    if as_json:
        emit_json({"tokens": [api_token(row) for row in rows]})
    else:
        _table(rows)
    if not rows:
        raise typer.Exit(EXIT_NOTHING)


def _table(rows: list[ApiToken]) -> None:
    table = Table(title=f"{len(rows)} token(s)")
    for name in ("id", "organization"):
        table.add_column(name, no_wrap=True)  # ids are copied from here: never cut
    for name in ("permissions", "created", "expires", "last used", "revoked"):
        table.add_column(name)
    now = utcnow()
    for row in rows:
        shown = api_token(row)
        expires = f"{shown['expiresAt']:%Y-%m-%d %H:%M}" + (" (expired)" if shown["expiresAt"] <= now else "")
        table.add_row(
            row.id,
            row.organization_id,
            "\n".join(row.permissions),
            f"{row.created_at:%Y-%m-%d %H:%M}",
            expires + (" (legacy)" if shown["legacy"] else ""),
            f"{row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never",
            f"{row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "",
        )
    console.print(table)


@tokens.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (24 hex), as `mdmq token list` shows it.")],
    as_json: Json = False,
) -> None:
    """Revoke a token: every API process refuses it from its next request on."""
    if not is_id(token_id):
        fail(f"{token_id!r} is not a token id (24 hex)", EXIT_USAGE)
    app = App(load_settings())
    try:
        with app.session() as session:
            if not revoke_token(session, token_id=token_id):
                row = get_token(session, token_id=token_id)
                said = "no token" if row is None else "already revoked:"
                fail(f"{said} {token_id}", EXIT_NOTHING)
            row = get_token(session, token_id=token_id)
            assert row is not None
            detail = {"tokenId": token_id}
            record_audit_event(
                session, organization_id=row.organization_id, actor=ACTOR, action=TOKEN_REVOKED, detail=detail
            )
    finally:
        app.close()
    if as_json:
        emit_json(api_token(row))
    else:
        typer.echo(f"revoked token {token_id} of {row.organization_id}")


def register(app: typer.Typer) -> None:
    app.add_typer(tokens, name="token")
