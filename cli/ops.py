"""The ops commands: what an operator asks on call, as tables in a terminal and `--json` for scripts.

Exit codes scripts can use: 0 done, 1 nothing found (an unknown id, an empty selection), 2 configuration,
64 a usage error (a malformed id, a status that does not exist), 65 declined at the confirmation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from api.representation import deployment_detail, deployment_summary, outcome, provider_hold
from cli.output import emit_json, make_console
from config import load_settings
from models.database import Session
from models.enums import Actor
from models.ids import is_id
from models.statuses import Kind, Status
from models.store import TransitionResult, deployment_history, get_deployment
from models.store.attempts import push_attempts
from models.store.certificates import watched_certificates
from models.store.credentials import list_credentials
from models.store.deployments import DeploymentFilter, count_deployments, list_deployments
from models.store.holds import held_providers
from models.store.maintenance import stuck_counts
from models.store.ops import get_receipt, held_deployment_counts
from models.tables import Deployment, PushAttempt
from models.types import utcnow
from workers.actors import declare_actors
from workers.app import App
from workers.services.operations import cancel_deployments, retry_deployments

EXIT_NOTHING = 1
EXIT_USAGE = 64
EXIT_DECLINED = 65

console = make_console()
err_console = make_console(stderr=True)
CHUNK = 1_000  # deployments per transaction of a cancel or retry
Json = Annotated[bool, typer.Option("--json", help="One JSON object on stdout, for scripts.")]


def _app() -> App:
    return App(load_settings())


def _status(value: str | None) -> Status | None:
    if value is None:
        return None
    try:
        return Status(value)
    except ValueError:
        typer.echo(f"mdmq: no status {value!r}; statuses are written as the console shows them", err=True)
        raise typer.Exit(EXIT_USAGE) from None


def status(
    deployment_id: Annotated[str, typer.Argument(help="The deployment's id (24 hex).")], as_json: Json = False
) -> None:
    """One deployment: where it stands, why, and its history."""
    if not is_id(deployment_id):
        typer.echo(f"mdmq: {deployment_id!r} is not a deployment id (24 hex)", err=True)
        raise typer.Exit(EXIT_USAGE)
    app = _app()
    try:
        with app.session() as s:
            d = get_deployment(s, deployment_id=deployment_id)
            if d is None:
                typer.echo(f"mdmq: no deployment {deployment_id}", err=True)
                raise typer.Exit(EXIT_NOTHING)
            history = deployment_history(s, deployment_id=deployment_id)
            receipt = get_receipt(s, receipt_id=d.receipt_id)
            attempts = push_attempts(s, deployment_id=deployment_id)
    finally:
        app.close()
    detail = deployment_detail(d, history, receipt, attempts)
    if as_json:
        emit_json(detail)
        return
    console.print(
        f"[bold]{d.kind.value} {d.id}[/] on device {d.device_id} ({d.organization_id}): [bold]{d.status}[/]"
    )
    error = detail["error"]
    for label, value in (
        ("held", d.hold_reason),
        ("error", error and error["message"]),
        ("next try", detail["nextAttemptAt"]),
    ):
        if value is not None:
            console.print(f"  {label}: {value}")
    table = Table("at", "from", "to", "by")
    for e in history:
        table.add_row(f"{e.at:%Y-%m-%d %H:%M:%S}", e.from_status or "", e.to_status, e.actor)
    console.print(table)
    if attempts:
        console.print(_failed_pushes(attempts))


def _failed_pushes(attempts: Sequence[PushAttempt]) -> Table:
    """The pushes the provider did not accept, newest first, each with its answer and next try."""
    table = Table("pushed at", "provider", "status", "reason", "outcome", "next try", title="failed pushes")
    for a in attempts:
        then = f"{a.next_attempt_at:%Y-%m-%d %H:%M:%S}" if a.next_attempt_at else ""
        status = str(a.status) if a.status is not None else ""
        table.add_row(f"{a.at:%Y-%m-%d %H:%M:%S}", a.provider, status, a.reason or "", a.outcome, then)
    return table


def deployments(
    *,
    org: Annotated[str | None, typer.Option(help="Only this organization.")] = None,
    status_: Annotated[str | None, typer.Option("--status", help="e.g. Failed, 'In progress'.")] = None,
    kind: Annotated[Kind | None, typer.Option(help="profile, app, security_action or message.")] = None,
    held: Annotated[
        bool | None, typer.Option("--held/--not-held", help="Held for a credential, or not.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Json = False,
) -> None:
    """Deployments by organization, status, kind and hold, newest first; how many match in all."""
    wanted = DeploymentFilter(kind=kind, status=_status(status_), held=held)
    app = _app()
    try:
        with app.session() as s:
            rows = list_deployments(
                s, organization_id=org, where=wanted, after=None, limit=limit, newest_first=True
            )
            total = count_deployments(s, organization_id=org, where=wanted)
    finally:
        app.close()
    if as_json:
        emit_json({"deployments": [deployment_summary(d) for d in rows], "total": total})
    else:
        _table(rows, f"{len(rows):,} of {total:,} deployment(s), newest first")
    if not rows:
        raise typer.Exit(EXIT_NOTHING)


def _matching(wanted: DeploymentFilter, org: str | None, limit: int) -> list[Deployment]:
    app = _app()
    try:
        with app.session() as s:
            return list_deployments(
                s, organization_id=org, where=wanted, after=None, limit=limit, newest_first=True
            )
    finally:
        app.close()


def _table(rows: Sequence[Deployment], title: str) -> None:
    table = Table(title=title)
    for name in ("id", "organization", "kind", "status"):
        table.add_column(name, no_wrap=True)  # ids are copied from here: never cut
    table.add_column("why")
    for d in rows:
        table.add_row(
            d.id, d.organization_id, d.kind.value, d.status.value, d.hold_reason or d.error_message or ""
        )
    console.print(table)


def stuck(as_json: Json = False) -> None:
    """Deployments unchanged for longer than MDMQ_STUCK_AFTER_S, per kind and status."""
    app = _app()
    try:
        with app.session() as s:
            since = utcnow() - timedelta(seconds=app.settings.stuck_after_s)
            counts = {k: n for k, n in stuck_counts(s, unchanged_since=since).items() if n}
    finally:
        app.close()
    if as_json:
        emit_json(
            {"stuck": [{"kind": k.value, "status": st.value, "count": n} for (k, st), n in counts.items()]}
        )
    else:
        table = Table(
            "kind", "status", "stuck", title=f"unchanged for {app.settings.stuck_after_s:.0f} s or more"
        )
        for (k, st), n in sorted(counts.items(), key=lambda item: -item[1]):
            table.add_row(k.value, st.value, f"{n:,}")
        console.print(table)
    if not counts:
        raise typer.Exit(EXIT_NOTHING)


def held(as_json: Json = False) -> None:
    """Organizations whose pushes through a provider are held, why, and when one push is tried again; then
    the held deployments per organization and reason."""
    app = _app()
    try:
        with app.session() as s:
            groups = held_deployment_counts(s)
            holds = [provider_hold(h) for h in held_providers(s)]
    finally:
        app.close()
    if as_json:
        held_json = [{"organizationId": o, "reason": r, "count": n} for o, r, n in groups]
        emit_json({"holds": holds, "held": held_json})
    else:
        _print_holds(holds)
        table = Table("organization", "held", "reason", title="held deployments")
        for org, reason, n in sorted(groups, key=lambda g: -g[2]):
            table.add_row(org, f"{n:,}", reason)
        console.print(table)
    if not groups and not holds:
        raise typer.Exit(EXIT_NOTHING)


def _print_holds(holds: list[dict[str, Any]]) -> None:
    if not holds:
        return
    table = Table("organization", "provider", "since", "next try", "reason", title="held providers")
    for h in holds:
        since = f"{h['heldAt']:%Y-%m-%d %H:%M}"
        next_try = f"{h['nextTryAt']:%Y-%m-%d %H:%M}" if h["nextTryAt"] else ""
        table.add_row(h["organizationId"], h["provider"], since, next_try, h["reason"])
    console.print(table)
    console.print("release by hand once fixed: mdmq release --org ORG --provider PROVIDER")


def certs(as_json: Json = False) -> None:
    """Every push credential and watched certificate, with its days left, soonest first."""
    app = _app()
    now = utcnow()
    try:
        with app.session() as s:
            rows = [
                (
                    f"{c.organization_id}/{c.provider.value}",
                    c.kind.value,
                    c.status.value,
                    c.not_after,
                    c.status_reason,
                )
                for c in list_credentials(s)
            ] + [
                (w.target, w.source.value, "error" if w.last_error else "watched", w.not_after, w.last_error)
                for w in watched_certificates(s)
            ]
    finally:
        app.close()
    rows.sort(key=lambda r: (r[3] is None, r[3] or now))
    days = [None if r[3] is None else round((r[3] - now).total_seconds() / 86_400, 1) for r in rows]
    if as_json:
        emit_json({"certificates": [
            {"name": r[0], "kind": r[1], "status": r[2], "notAfter": r[3], "daysLeft": d, "note": r[4]}
            for r, d in zip(rows, days, strict=True)
        ]})  # fmt: skip
        return
    table = Table("certificate", "kind", "status", "expires", "days left", "note")
    for r, d in zip(rows, days, strict=True):
        table.add_row(
            r[0], r[1], r[2], f"{r[3]:%Y-%m-%d}" if r[3] else "", "" if d is None else f"{d:g}", r[4] or ""
        )
    console.print(table)


def _act(
    what: str, *, ids: list[str], status_: str | None, org: str | None, yes: bool, as_json: bool
) -> None:
    """Cancel or retry: ids, or a filter (status and organization) with a count and a confirmation."""
    ids = _selected(ids, status_, org)
    if not yes and not typer.confirm(f"{what} {len(ids):,} deployment(s)?", err=True):
        raise typer.Exit(EXIT_DECLINED)
    results: list[TransitionResult] = []
    app = _app()
    actors = declare_actors(app) if what == "retry" else None
    try:
        # A transaction a chunk, each committed (and, for a retry, enqueued) before the next: a long selection
        # shows its progress, and an interrupted one has done what it says.
        with _progress(what, len(ids), enabled=not as_json) as advance:
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                with app.session() as s:
                    result = _apply(s, what, chunk)
                if actors is not None:
                    actors.enqueue_ids([a.deployment_id for a in result.applied])
                results.append(result)
                advance(len(chunk))
    finally:
        app.close()
    report_outcome(what, results, as_json=as_json)


def _selected(ids: list[str], status_: str | None, org: str | None) -> list[str]:
    if ids and (status_ or org):
        typer.echo("mdmq: give ids, or --status/--org, not both", err=True)
        raise typer.Exit(EXIT_USAGE)
    if not ids:
        if status_ is None:
            typer.echo("mdmq: give ids, or --status (and --org) to select", err=True)
            raise typer.Exit(EXIT_USAGE)
        ids = [d.id for d in _matching(DeploymentFilter(status=_status(status_)), org, 10_000)]
    bad = [i for i in ids if not is_id(i)]
    if bad:
        typer.echo(f"mdmq: not deployment ids: {', '.join(bad[:5])}", err=True)
        raise typer.Exit(EXIT_USAGE)
    if not ids:
        typer.echo("mdmq: nothing selected", err=True)
        raise typer.Exit(EXIT_NOTHING)
    return ids


@contextmanager
def _progress(what: str, total: int, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    if not enabled or total <= CHUNK:
        yield lambda n: None
        return
    with Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), console=err_console, transient=True
    ) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def _apply(s: Session, what: str, ids: list[str]) -> TransitionResult:
    if what == "cancel":
        return cancel_deployments(s, ids=ids, actor=Actor.ops)
    return retry_deployments(s, ids=ids, actor=Actor.ops)


Ids = Annotated[list[str] | None, typer.Argument(help="Deployment ids; or select with --status and --org.")]
StatusOption = Annotated[str | None, typer.Option("--status", help="Select by status, e.g. Failed.")]
OrgOption = Annotated[str | None, typer.Option("--org", help="Select within this organization.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def cancel(
    ids: Ids = None,
    status_: StatusOption = None,
    org: OrgOption = None,
    yes: Yes = False,
    as_json: Json = False,
) -> None:
    """Cancel deployments that have not started; later reports for them change nothing."""
    _act("cancel", ids=ids or [], status_=status_, org=org, yes=yes, as_json=as_json)


def retry(
    ids: Ids = None,
    status_: StatusOption = None,
    org: OrgOption = None,
    yes: Yes = False,
    as_json: Json = False,
) -> None:
    """Retry Failed and Error distributing deployments afresh: back to Queued, and enqueued."""
    _act("retry", ids=ids or [], status_=status_, org=org, yes=yes, as_json=as_json)


def register(app: typer.Typer) -> None:
    for command in (status, deployments, stuck, held, certs, cancel, retry):
        app.command(name=command.__name__)(command)


def report_outcome(what: str, results: Sequence[TransitionResult], *, as_json: bool) -> None:
    """What a cancel or retry applied, and why the rest was refused (the first 20), or all of it as JSON;
    exits EXIT_NOTHING when nothing was applied."""
    done = outcome(results)
    if as_json:
        emit_json(done)
    else:
        console.print(f"{what}: {len(done['applied']):,} applied, {len(done['refused']):,} refused")
        for refusal in done["refused"][:20]:
            console.print(f"  {refusal['id']}: {refusal['reason']}")
    if not done["applied"]:
        raise typer.Exit(EXIT_NOTHING)
