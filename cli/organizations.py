"""`mdmq orgs show|set`: an organization's wake-up rate and its weight on the bulk lane (DESIGN §4.7), as the
API's `/settings` reads and changes them; a change is kept in the audit record.

Exit codes: 0 done, 1 no such organization (show, and set: a setting never creates one), 64 usage (a rate
outside 0.1-100,000 a second, a weight outside 1-100).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.output import emit_json, fail, make_console
from config import load_settings
from models.ids import is_organization_id
from models.store.audit import record_audit_event
from models.store.organizations import (
    FairShare,
    InvalidFairShare,
    UnknownOrganization,
    check_fair_share,
    fair_share_of,
    organization_exists,
    set_fair_share,
)
from workers.app import App

EXIT_NOTHING = 1
EXIT_USAGE = 64

organizations = typer.Typer(no_args_is_help=True, help="Organizations' settings: wake-up rate, bulk weight.")
console = make_console()
Json = Annotated[bool, typer.Option("--json", help="One JSON object on stdout, for scripts.")]
OrgOption = Annotated[str, typer.Option("--org", help="The organization.")]


@organizations.command("show")
def show(org: OrgOption, as_json: Json = False) -> None:
    """The organization's wake-up rate (pushes per second; none: unpaced) and bulk-lane weight."""
    _check_id(org)
    app = App(load_settings())
    try:
        with app.session() as s:
            if not organization_exists(s, organization_id=org):
                fail(f"no organization {org}", EXIT_NOTHING)
            share = fair_share_of(s, organization_id=org)
    finally:
        app.close()
    _print(org, share, as_json)


@organizations.command("set")
def set_(
    org: OrgOption,
    wake_rate: Annotated[
        float | None,
        typer.Option(
            "--wake-rate", help="Wake-up pushes a second for bulk work (0.1-100000), shared by every worker."
        ),
    ] = None,
    unpaced: Annotated[bool, typer.Option("--unpaced", help="No wake-up rate: as fast as accepted.")] = False,
    weight: Annotated[
        int | None, typer.Option("--weight", help="Share of the bulk lane beside others (1-100; default 1).")
    ] = None,
    as_json: Json = False,
) -> None:
    """Change the organization's wake-up rate (or `--unpaced`) and weight. Urgent work is never paced."""
    _check_id(org)
    if wake_rate is not None and unpaced:
        fail("--wake-rate and --unpaced exclude each other", EXIT_USAGE)
    try:
        check_fair_share(weight=weight, wake_rate_per_s=wake_rate)
    except InvalidFairShare as e:
        fail(str(e), EXIT_USAGE)
    changes: dict[str, Any] = {}
    if wake_rate is not None or unpaced:
        changes["wake_rate_per_s"] = wake_rate
    if weight is not None:
        changes["weight"] = weight
    if not changes:
        fail("nothing to change: give --wake-rate, --unpaced or --weight", EXIT_USAGE)
    app = App(load_settings())
    try:
        with app.session() as s:
            try:
                share = set_fair_share(s, organization_id=org, **changes)
            except UnknownOrganization as e:
                fail(str(e), EXIT_NOTHING)
            detail = {_API_NAMES[name]: value for name, value in changes.items()}
            record_audit_event(s, organization_id=org, actor="cli", action="settings.changed", detail=detail)
    finally:
        app.close()
    _print(org, share, as_json)


_API_NAMES = {"wake_rate_per_s": "wakeRatePerS", "weight": "fairWeight"}


def _check_id(org: str) -> None:
    if not is_organization_id(org):
        fail(f"invalid organization id {org!r}", EXIT_USAGE)


def _print(org: str, share: FairShare, as_json: bool) -> None:
    if as_json:
        emit_json({"organizationId": org, "wakeRatePerS": share.wake_rate_per_s, "fairWeight": share.weight})
        return
    rate = f"{share.wake_rate_per_s:g}/s" if share.wake_rate_per_s else "unpaced"
    console.print(f"{org}: wake-up rate {rate}, bulk weight {share.weight}")


def register(app: typer.Typer) -> None:
    app.add_typer(organizations, name="orgs")
