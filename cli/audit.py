"""`mdmq audit --org ORG`: the organization's audit record, newest first, as the API's
`GET …/audit-events` gives it.

Exit codes: 0 events shown, 1 none, 2 configuration, 3 the database refused, 64 usage.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from api.representation import audit_event
from cli.options import parse_since
from cli.output import emit_json, make_console
from cli.tokens import EXIT_NOTHING, EXIT_USAGE, Json
from config import load_settings
from models.ids import is_organization_id
from models.store.audit import audit_events
from models.tables import AuditEvent
from workers.app import App

console = make_console()


def audit(
    *,
    org: Annotated[str, typer.Option("--org", help="The organization.")],
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Only events at or after this: an ISO 8601 time with a UTC offset, or 7d, 12h."
        ),
    ] = None,
    action: Annotated[
        str | None, typer.Option("--action", help="Only this action, e.g. token.created.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    as_json: Json = False,
) -> None:
    """Who (an API token's id, or cli) uploaded credentials, forced a topic change, cancelled or retried
    deployments, created or revoked tokens, rotated secrets, released holds or restored push tokens; newest
    first."""
    if not is_organization_id(org):
        typer.echo(
            f"mdmq: --org {org!r} is not an organization id (24 hex, or 3+ letters, digits, -)", err=True
        )
        raise typer.Exit(EXIT_USAGE)
    after = parse_since(since)
    app = App(load_settings())
    try:
        with app.session() as session:
            events = audit_events(session, organization_id=org, action=action, since=after, limit=limit)
    finally:
        app.close()
    if as_json:
        emit_json({"events": [audit_event(e) for e in events]})
    else:
        _table(events, org)
    if not events:
        raise typer.Exit(EXIT_NOTHING)


def _table(events: list[AuditEvent], org: str) -> None:
    table = Table("at", "actor", "action", "detail", title=f"{len(events)} audit event(s) of {org}")
    for e in events:
        detail = json.dumps(e.detail, sort_keys=True) if e.detail else ""
        table.add_row(f"{e.at:%Y-%m-%d %H:%M:%S}", e.actor, e.action, detail)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command(name="audit")(audit)
