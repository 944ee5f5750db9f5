"""`mdmq credentials put`: an operator's upload of a push credential, validated, guarded and released as the
API's upload is.

Exit codes: 0 stored, 2 configuration, 3 the database refused, 4 the credential was refused (unusable
material, a kind of another provider, an APNs token key), 5 a change of APNs topic refused (`--force` to
make it), 64 usage (a malformed organization id, an unreadable file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from api.representation import credential
from cli.output import emit_json, fail
from config import load_settings
from models.enums import CredentialKind, Provider, PushEnvironment
from models.ids import is_organization_id
from models.store import ensure_organization
from models.tables import PushCredential
from workers.actors import declare_actors
from workers.app import App
from workers.providers.credentials import InvalidCredential
from workers.services.credentials import CLI_ACTOR, CredentialUpload, TopicChange, upload_credential

EXIT_REFUSED = 4
EXIT_TOPIC_CHANGE = 5
EXIT_USAGE = 64

# What each provider's upload is, unless --kind says otherwise: APNs takes only MDM push certificates.
DEFAULT_KINDS = {
    Provider.apns: CredentialKind.apns_certificate,
    Provider.fcm: CredentialKind.fcm_service_account,
    Provider.aosp: CredentialKind.aosp_api_key,
}

credentials = typer.Typer(no_args_is_help=True, help="Push credentials.")


@credentials.command("put")
def put(
    *,
    org: Annotated[
        str, typer.Option("--org", help="The organization whose credential this is (created if new).")
    ],
    provider: Annotated[Provider, typer.Option("--provider", help="apns, fcm or aosp.")],
    file: Annotated[
        Path,
        typer.Option(
            "--file",
            help="APNs: the MDM push certificate and its key, one PEM file; FCM: the service-account JSON; "
            "AOSP: the API key.",
        ),
    ],
    kind: Annotated[
        CredentialKind | None, typer.Option("--kind", help="Default: the provider's own kind.")
    ] = None,
    environment: Annotated[
        PushEnvironment, typer.Option("--environment", help="APNs: production or sandbox.")
    ] = PushEnvironment.production,
    project_id: Annotated[
        str | None, typer.Option("--project-id", help="FCM: instead of the service account's own.")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="APNs: store a certificate whose topic differs from the stored one's (audited)."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout, for scripts.")] = False,
) -> None:
    """Store the organization's credential for a provider, replacing the previous one, and enqueue what
    was held for it. A change of APNs topic needs --force: devices enrolled under the old topic stop
    answering until they re-enroll (renew the certificate with the same Apple ID instead)."""
    if not is_organization_id(org):
        fail(f"--org {org!r} is not an organization id (24 hex, or 3+ letters, digits, -)", EXIT_USAGE)
    upload = CredentialUpload(
        kind=kind or DEFAULT_KINDS[provider],
        secret=_read_secret(file),
        project_id=project_id,
        environment=environment,
    )
    app = App(load_settings())
    try:
        with app.session() as session:
            ensure_organization(session, organization_id=org)
        stored = upload_credential(
            app.session,
            declare_actors(app).enqueue_ids,
            organization_id=org,
            provider=provider,
            upload=upload,
            force=force,
            actor=CLI_ACTOR,
        )
    except InvalidCredential as e:  # names the field, never the value
        fail(f"the {provider.value} credential was refused: {e}", EXIT_REFUSED)
    except TopicChange as e:
        fail(f"{e} (--force)", EXIT_TOPIC_CHANGE)
    finally:
        app.close()
    _print(stored.credential, released=len(stored.released), as_json=as_json)


def _read_secret(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"--file {file}: cannot be read ({type(e).__name__})", EXIT_USAGE)


def _print(row: PushCredential, *, released: int, as_json: bool) -> None:
    if as_json:
        emit_json(credential(row) | {"released": released})
        return
    what = row.topic or row.project_id or row.kind.value
    until = f", until {row.not_after:%Y-%m-%d}" if row.not_after else ""
    typer.echo(f"{row.organization_id}/{row.provider.value}: {what} ({row.status.value}{until})")
    typer.echo(f"released {released} deployment(s)")


def register(app: typer.Typer) -> None:
    app.add_typer(credentials, name="credentials")
