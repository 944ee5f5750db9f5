"""The way out of a hold, by hand: `mdmq release`, and `mdmq devices restore-tokens` for tokens an answer
invalidated that turned out to be the organization's (a wrong certificate, a wrong Firebase project).

Exit codes as the other ops commands: 0 done, 1 nothing to do, 64 usage.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.devices import devices
from cli.ops import EXIT_NOTHING, Json, _app, console
from cli.options import parse_since
from cli.output import emit_json
from models.enums import Provider
from models.store.audit import record_audit_event
from models.store.holds import provider_holds, release_provider, restore_tokens
from workers.actors import declare_actors

OrgOption = Annotated[str, typer.Option("--org", help="The organization.")]
ProviderOption = Annotated[Provider, typer.Option("--provider", help="apns, fcm or aosp.")]


def release(org: OrgOption, provider: ProviderOption, as_json: Json = False) -> None:
    """Release an organization's pushes through PROVIDER held for its credential or configuration, once the
    cause is fixed: the held deployments are enqueued, and a new refusal holds them again."""
    app = _app()
    try:
        with app.session() as s:
            hold = provider_holds(s, organization_ids={org}).get((org, provider))
            reason = hold.reason if hold is not None else None
            ids = release_provider(s, organization_id=org, provider=provider)
            if reason is not None or ids:
                record_audit_event(
                    s,
                    organization_id=org,
                    actor="cli",
                    action="hold.released",
                    detail={"provider": provider.value, "by": "hand", "reason": reason, "held": len(ids)},
                )
        declare_actors(app).enqueue_ids(ids)
    finally:
        app.close()
    if as_json:
        emit_json({"organizationId": org, "provider": provider.value, "released": len(ids), "reason": reason})
    else:
        console.print(f"released {len(ids):,} deployment(s) of {org} for {provider.value}")
    if reason is None and not ids:
        raise typer.Exit(EXIT_NOTHING)


def restore_tokens_command(
    org: OrgOption,
    since: Annotated[
        str | None, typer.Option("--since", help="Only tokens invalidated at or after this ISO 8601 time.")
    ] = None,
    credential: Annotated[
        str | None,
        typer.Option("--credential", help="Only tokens invalidated with the credential of this fingerprint."),
    ] = None,
    provider: Annotated[Provider | None, typer.Option("--provider", help="apns, fcm or aosp.")] = None,
    as_json: Json = False,
) -> None:
    """Make invalidated push tokens valid again, e.g. those a wrong credential's answers invalidated."""
    after = parse_since(since)
    app = _app()
    try:
        with app.session() as s:
            restored = restore_tokens(
                s, organization_id=org, provider=provider, since=after, fingerprint=credential
            )
            if restored:
                detail = {"restored": restored, "since": since, "credential": credential}
                record_audit_event(
                    s, organization_id=org, actor="cli", action="tokens.restored", detail=detail
                )
    finally:
        app.close()
    if as_json:
        emit_json({"organizationId": org, "restored": restored})
    else:
        console.print(f"restored {restored:,} token(s) of {org}")
    if not restored:
        raise typer.Exit(EXIT_NOTHING)


def register(app: typer.Typer) -> None:
    app.command(name="release")(release)
    devices.command(name="restore-tokens")(restore_tokens_command)  # the group is cli.devices'
