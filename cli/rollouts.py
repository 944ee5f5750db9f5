"""`mdmq rollouts [show|cancel|retry]`: the deployments of one create request, followed together, as the
API's `/rollouts` shows them; `show --watch` follows one live until it is done.

Exit codes: 0 done, 1 nothing found (no rollout, an unknown id, nothing to cancel or retry), 2 configuration,
3 the database refused, 64 usage (a malformed id), 65 declined at the confirmation, 130 stopped watching.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from api.representation import rollout
from cli.ops import report_outcome
from cli.output import console, emit_json, fail
from config import load_settings
from models.ids import is_id
from models.statuses import Status
from models.store import TransitionResult
from models.store.rollouts import (
    RolloutProgress,
    count_rollouts,
    get_rollout,
    recent_rollouts,
    rollout_progress,
)
from workers.actors import declare_actors
from workers.app import App
from workers.services.operations import cancel_rollout, retry_rollout

EXIT_NOTHING = 1
EXIT_USAGE = 64
EXIT_DECLINED = 65
EXIT_INTERRUPTED = 130  # as a shell reports a command stopped by Ctrl-C

rollouts = typer.Typer(help="Rollouts: one create request's deployments, followed together.")
Json = Annotated[bool, typer.Option("--json", help="One JSON object on stdout, for scripts.")]
RolloutId = Annotated[str, typer.Argument(help="The rollout's id (24 hex), as the create answered it.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def _app() -> App:
    return App(load_settings())


@rollouts.callback(invoke_without_command=True)
def listing(
    ctx: typer.Context,
    *,
    org: Annotated[str | None, typer.Option(help="Only this organization's.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1_000)] = 20,
    as_json: Json = False,
) -> None:
    """The newest rollouts of every organization (or --org's), with their progress and ETA."""
    if ctx.invoked_subcommand is not None:
        return
    app = _app()
    try:
        with app.session() as s:
            progress = rollout_progress(s, rollouts=recent_rollouts(s, organization_id=org, limit=limit))
            total = count_rollouts(s, organization_id=org)
    finally:
        app.close()
    if as_json:
        emit_json({"rollouts": [rollout(p) for p in progress], "total": total})
    else:
        console.print(_list_table(progress, f"{len(progress):,} of {total:,} rollout(s), newest first"))
    if not progress:
        raise typer.Exit(EXIT_NOTHING)


def _list_table(progress: list[RolloutProgress], title: str) -> Table:
    table = Table(title=title)
    table.add_column("id", no_wrap=True, min_width=24)  # ids are copied from here: never cut
    table.add_column("org")
    table.add_column("kind")
    for name in ("total", "done", "held", "created", "ETA"):
        table.add_column(name, justify="right")
    for p in progress:
        r = p.rollout
        table.add_row(
            r.id,
            r.organization_id,
            r.kind,
            f"{r.total:,}",
            f"{_percent(p)}%",
            f"{p.held:,}",
            f"{r.created_at:%m-%d %H:%M}",
            _eta(p),
        )
    return table


def _percent(p: RolloutProgress) -> int:
    """Finished, in whole percent: 100 only when every deployment has."""
    return 100 if p.done else min(99, p.finished * 100 // p.rollout.total)


def _eta(p: RolloutProgress) -> str:
    """When the pushes end, as a person reads it: `done`; `pushed` (the devices are left to finish) or `held`
    (only held ones are left to push); `unknown` (no push in the last minute); `1h 05m`, `3m 20s`, `45s`."""
    if p.done:
        return "done"
    if p.to_push <= 0:
        return "held" if p.held else "pushed"
    eta = p.eta_s
    return "unknown" if eta is None else _duration(round(eta))


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3_600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


@rollouts.command("show")
def show(
    rollout_id: RolloutId,
    *,
    watch: Annotated[
        bool, typer.Option("--watch", help="Follow it live until every deployment is done, or Ctrl-C.")
    ] = False,
    interval_s: Annotated[
        float, typer.Option("--interval", min=0.05, help="Seconds between two counts with --watch.")
    ] = 2.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object on stdout; with --watch, one line per count.")
    ] = False,
) -> None:
    """One rollout: counts per status, push state, rate and ETA."""
    _check_id(rollout_id)
    app = _app()
    try:
        if watch:
            _watch(app, rollout_id, interval_s=interval_s, as_json=as_json)
            return
        p = _progress_of(app, rollout_id)
    finally:
        app.close()
    if as_json:
        emit_json(rollout(p))
    else:
        console.print(_view(p))


def _check_id(rollout_id: str) -> None:
    if not is_id(rollout_id):
        fail(f"{rollout_id!r} is not a rollout id (24 hex)", EXIT_USAGE)


def _progress_of(app: App, rollout_id: str) -> RolloutProgress:
    with app.session() as s:
        found = get_rollout(s, rollout_id=rollout_id)
        if found is None:
            fail(f"no rollout {rollout_id}", EXIT_NOTHING)
        [p] = rollout_progress(s, rollouts=[found])
    return p


def _counts(app: App, rollout_id: str, interval_s: float) -> Iterator[RolloutProgress]:
    """The rollout's progress every `interval_s`, until it is done (that count included)."""
    while True:
        p = _progress_of(app, rollout_id)
        yield p
        if p.done:
            return
        time.sleep(interval_s)


def _watch(app: App, rollout_id: str, *, interval_s: float, as_json: bool) -> None:
    try:
        if as_json:
            for p in _counts(app, rollout_id, interval_s):
                emit_json(rollout(p))
            return
        bar = Progress(
            TextColumn("finished"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(), console=console
        )
        task = bar.add_task("finished", total=None)
        with Live(console=console, auto_refresh=False) as live:
            for p in _counts(app, rollout_id, interval_s):
                bar.update(task, completed=p.finished, total=p.rollout.total)
                live.update(Group(bar, _view(p)), refresh=True)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _view(p: RolloutProgress) -> Group:
    r = p.rollout
    title = f"rollout {r.id} ({r.organization_id}, {r.kind}): {r.total:,} deployment(s), {_percent(p)}% done"
    counts = Table("status", "deployments")
    for status in Status:
        if status in p.counts:
            counts.add_row(status.value, f"{p.counts[status]:,}")
    push = (
        f"pushes: {p.never_pushed:,} never pushed, {p.pushed:,} pushed, {p.retrying:,} retrying, "
        f"{p.held:,} held"
    )
    rate = "unknown" if p.rate_per_s is None else f"{p.rate_per_s:,.1f}/s"
    pace = f"rate {rate}, ETA {_eta(p)}"
    if p.first_push_at is not None and p.last_push_at is not None:
        pace += f"; pushed {p.first_push_at:%H:%M:%S} to {p.last_push_at:%H:%M:%S} UTC"
    held = [f"  held {n:,}: {reason}" for reason, n in sorted(p.held_reasons.items(), key=lambda i: -i[1])]
    return Group(title, counts, push, *held, pace)


@rollouts.command("cancel")
def cancel(rollout_id: RolloutId, yes: Yes = False, as_json: Json = False) -> None:
    """Cancel every deployment of the rollout the devices have not started."""
    _act("cancel", rollout_id, yes=yes, as_json=as_json)


@rollouts.command("retry")
def retry(rollout_id: RolloutId, yes: Yes = False, as_json: Json = False) -> None:
    """Retry the rollout's Failed and Error distributing deployments afresh: back to Queued, and enqueued."""
    _act("retry", rollout_id, yes=yes, as_json=as_json)


def _act(what: str, rollout_id: str, *, yes: bool, as_json: bool) -> None:
    _check_id(rollout_id)
    app = _app()
    try:
        p = _progress_of(app, rollout_id)
        question = (
            f"{what} rollout {rollout_id} ({p.rollout.organization_id}, {p.rollout.total:,} deployments)?"
        )
        if not yes and not typer.confirm(question, err=True):
            raise typer.Exit(EXIT_DECLINED)
        results = _apply(app, what, rollout_id)
    finally:
        app.close()
    report_outcome(what, results, as_json=as_json)


def _apply(app: App, what: str, rollout_id: str) -> list[TransitionResult]:
    """Chunk by chunk, each committed (and for a retry, enqueued) before the next."""
    if what == "cancel":
        return list(cancel_rollout(app.session, rollout_id=rollout_id))
    actors = declare_actors(app)
    results = []
    for result in retry_rollout(app.session, rollout_id=rollout_id):
        actors.enqueue_ids([a.deployment_id for a in result.applied])
        results.append(result)
    return results


def register(app: typer.Typer) -> None:
    app.add_typer(rollouts, name="rollouts")
