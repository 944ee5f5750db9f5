"""`mdmq queues`: the operator's page in a terminal — queues, workers, running rollouts, holds and
credentials, from the same overview the page shows (`workers.overview`).

Exit codes: 0 done (with the broker down too: its figures are left out, and the output says why),
2 configuration, 3 the database refused.
"""

from __future__ import annotations

import typer
from rich.console import Console, Group
from rich.progress_bar import ProgressBar
from rich.table import Table

from cli.ops import Json, _app
from cli.output import emit_json
from models.types import utcnow
from workers.overview import Overview, gather_overview

console = Console()


def queues(as_json: Json = False) -> None:
    """Queues (ready, delayed, in flight, dead), live workers, rollouts in progress, held organizations and
    credentials by days to expiry: every organization's."""
    app = _app()
    try:
        with app.session() as session:
            overview = gather_overview(session, app.broker, now=utcnow())
    finally:
        app.close()
    if as_json:
        emit_json(overview.as_json())
        return
    if overview.broker_problem:
        console.print(f"[bold red]the broker ({overview.broker}) is {overview.broker_problem}[/]")
    console.print(Group(*tables(overview)))


def tables(o: Overview) -> list[Table]:
    return [_queues(o), _workers(o), _rollouts(o), _holds(o), _credentials(o)]


def _figure(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,}"


def _queues(o: Overview) -> Table:
    table = Table("queue", "ready", "delayed", "in flight", "orphaned", "dead", title=f"queues ({o.broker})")
    for q in o.queues:
        table.add_row(
            q.queue,
            _figure(q.ready),
            _figure(q.delayed),
            _figure(q.in_flight),
            _figure(q.orphaned),
            _figure(q.dead),
        )
    return table


def _workers(o: Overview) -> Table:
    table = Table("worker", "host:pid", "heartbeat age", title=f"live workers: {_figure(o.live_workers)}")
    for w in o.workers:
        table.add_row(w.worker_id, w.name, f"{w.age_s:.1f} s")
    return table


def _rollouts(o: Overview) -> Table:
    table = Table("rollout", "organization", "kind", "progress", "finished", "pushed", "held")
    table.title = f"rollouts in progress: {len(o.rollouts)}"
    for r in o.rollouts:
        bar = ProgressBar(total=max(r.total, 1), completed=r.finished, width=20)
        table.add_row(
            r.rollout_id,
            r.organization_id,
            r.kind,
            bar,
            f"{r.finished:,}/{r.total:,}",
            f"{r.pushed:,}",
            f"{r.held:,}",
        )
    return table


def _holds(o: Overview) -> Table:
    table = Table(
        "organization", "provider", "since", "held", "reason", title=f"held organizations: {len(o.holds)}"
    )
    for h in o.holds:
        table.add_row(
            h.organization_id, h.provider, f"{h.held_at:%Y-%m-%d %H:%M}", f"{h.held_deployments:,}", h.reason
        )
    return table


def _credentials(o: Overview) -> Table:
    table = Table("organization", "provider", "kind", "status", "expires", "days left", title="credentials")
    for c in o.credentials:
        expires = f"{c.not_after:%Y-%m-%d}" if c.not_after else ""
        days = "" if c.days_left is None else f"{c.days_left:g}"
        table.add_row(c.organization_id, c.provider, c.kind, c.status, expires, days)
    return table


def register(app: typer.Typer) -> None:
    app.command(name="queues")(queues)
