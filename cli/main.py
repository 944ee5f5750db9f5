"""`mdmq`: the command that runs mdmq's processes and answers ops questions."""

from __future__ import annotations

import logging
import os
import signal
import sys

import typer

from config import SettingsError, load_settings
from config.logging import configure_logging
from config.settings import Settings
from models.database import DRIVER_ERRORS

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="mdmq: MDM deployments, pushes and retries.",
    pretty_exceptions_enable=False,  # errors an operator can act on are one line; see main()
)
db = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(db, name="db")

EXIT_CONFIG = 2
EXIT_DATABASE = 3
EXIT_USAGE = 64  # sysexits' EX_USAGE: the command was given something it cannot use


@db.command("upgrade")
def db_upgrade(
    revision: str = typer.Argument("head", help="Alembic revision to migrate to."),
    stay: bool = typer.Option(
        False,
        "--stay",
        help="Then keep running until stopped: for process managers that stop every process when one ends "
        "(honcho, foreman), which run the Procfile's release beside the others.",
    ),
) -> None:
    """Migrate the database of MDMQ_DATABASE_URL to the newest schema (or REVISION)."""
    from models.migrations.runner import upgrade

    settings = load_settings()
    configure_logging(level=settings.log_level, json_lines=settings.json_logs)
    upgrade(settings.database_url, revision)
    if settings.json_logs:  # the release step of a deployment: its log, one format
        logging.getLogger(__name__).info("database at %s", revision, extra={"revision": revision})
    else:
        typer.echo(f"database at {revision}")
    if stay:
        stopping = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
        signal.sigwait(stopping)


@db.command("current")
def db_current() -> None:
    """The revision of the database of MDMQ_DATABASE_URL, and whether it is the newest (else exit 3)."""
    from models.database import database_cause
    from models.migrations.runner import schema

    settings = load_settings()
    try:
        state = schema(settings.database_url)
    except DRIVER_ERRORS as e:
        typer.echo(f"mdmq: the database refused: {database_cause(e)}", err=True)
        raise typer.Exit(EXIT_DATABASE) from None
    at = ", ".join(sorted(state.current)) or "no revision (an empty database)"
    if state.is_newest:
        typer.echo(f"{at} (newest)")
        return
    typer.echo(f"{at}; the newest is {', '.join(sorted(state.newest))}: run `mdmq db upgrade`")
    raise typer.Exit(EXIT_DATABASE)


@db.command("history")
def db_history() -> None:
    """Every revision of the schema, newest first, from the migrations this mdmq holds."""
    from models.migrations.runner import history

    for revision in history(load_settings().database_url):
        typer.echo(f"{revision.id} {'(newest)' if revision.is_newest else '        '} {revision.title}")


def _wait_for_schema(settings: Settings) -> None:
    """The long-running processes start once the release step has brought the database to the newest
    schema: honcho and Kubernetes start them beside it. Then each tries its secret key on a stored secret."""
    from cli.secrets import check_key_at_start
    from models.migrations.runner import wait_for_schema

    cause = wait_for_schema(settings.database_url, settings.schema_wait_s)
    if cause is not None:
        typer.echo(f"mdmq: the database is not ready after {settings.schema_wait_s:g} s: {cause}", err=True)
        raise typer.Exit(EXIT_DATABASE)
    check_key_at_start(settings)


@app.command()
def demo(
    devices: int = typer.Option(1000, min=1, help="Simulated devices in the rollout."),
    seed: int = typer.Option(7, help="Seed of the fleet's devices and behaviours."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object with the counts."),
    timeout_s: float = typer.Option(600, "--timeout", help="Give up after this many seconds."),
) -> None:
    """A mixed rollout of profiles, apps, locks and messages to simulated devices, through the whole pipeline.

    Exits 0 when every deployment reached the status its simulated device dictates."""
    from cli.demo import run_demo
    from cli.output import demo_progress, print_demo

    settings = load_settings()
    configure_logging(level="WARNING", json_lines=settings.json_logs)
    with demo_progress(enabled=not json_output) as progress:
        result = run_demo(settings, devices=devices, seed=seed, timeout_s=timeout_s, progress=progress)
    if json_output:
        typer.echo(result.as_json())
    else:
        print_demo(result)
    raise typer.Exit(0 if result.ok else 1)


@app.command()
def api(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
) -> None:
    """The HTTP API (the Procfile's `web`); its /metrics on MDMQ_METRICS_HOST:MDMQ_API_METRICS_PORT."""
    import uvicorn

    from api.app import create_app
    from api.metrics import serve_metrics
    from api.server import server_config
    from config.sentry import init_sentry

    settings = load_settings()
    configure_logging(level=settings.log_level, json_lines=settings.json_logs)
    init_sentry(settings, process="api")
    _wait_for_schema(settings)
    try:
        serve_metrics(host=settings.metrics_host, port=settings.api_metrics_port)
    except OSError as e:
        address = f"{settings.metrics_host}:{settings.api_metrics_port}"
        typer.echo(f"mdmq: cannot serve metrics on {address}: {e.strerror} (MDMQ_API_METRICS_PORT)", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    uvicorn.Server(server_config(create_app(), settings, host=host, port=port)).run()


@app.command()
def worker(
    processes: int = typer.Option(2, min=1, help="Worker processes."),
    threads: int = typer.Option(8, min=1, help="Threads per worker process for the bulk queue."),
    urgent_threads: int | None = typer.Option(
        None,
        min=0,
        max=64,  # as MDMQ_WORKER_URGENT_THREADS allows
        help="Urgent-lane threads for each worker process, all in a process of their own started beside the "
        "others, which then take the bulk queue alone (default MDMQ_WORKER_URGENT_THREADS, 2; 0: no such "
        "process, every thread takes every queue).",
    ),
) -> None:
    """The Dramatiq workers: Dramatiq's command on `workers.main:broker` with these processes and threads."""
    from workers.launch import worker_command, worker_environment

    settings = load_settings()  # a wrong setting is one line here, not a traceback in every worker process
    configure_logging(level=settings.log_level, json_lines=settings.json_logs)
    _wait_for_schema(settings)
    urgent = settings.worker_urgent_threads if urgent_threads is None else urgent_threads
    command = worker_command(processes, threads, urgent_threads=urgent)
    environment = worker_environment(settings, os.environ) | {"MDMQ_WORKER_URGENT_THREADS": str(urgent)}
    os.execvpe(command[0], command, environment)  # noqa: S606  (replaces this process)


@app.command()
def scheduler() -> None:
    """The scheduler process: sweeps, stuck detection and retention while it holds the leader lease; run two
    or more for failover. Stops on SIGTERM or SIGINT and hands the lease over."""
    from scheduler.__main__ import main as run_scheduler

    settings = load_settings()
    configure_logging(level=settings.log_level, json_lines=settings.json_logs)  # the start-up lines too
    _wait_for_schema(settings)
    run_scheduler()


from cli import (  # noqa: E402  (after the app and its groups)
    audit,
    credentials,
    devices,
    holds,
    ops,
    organizations,
    queues,
    rollout_create,
    rollouts,
    sandbox,
    secrets,
    tokens,
)

ops.register(app)
rollouts.register(app)
rollout_create.register(rollouts.rollouts)
holds.register(app)
credentials.register(app)
devices.register(app)
tokens.register(app)
audit.register(app)
organizations.register(app)
secrets.register(app)
queues.register(app)
sandbox.register(app)


def main() -> None:
    try:
        app()
    except SettingsError as e:
        # A wrong setting is an operator's typo, not a crash: one line that names the variable.
        print(f"mdmq: invalid configuration: {e}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except DRIVER_ERRORS as e:
        # The database is down, or has no schema yet: one line, and what to do when it is the schema.
        driver_error = getattr(e, "orig", None)  # the driver's own, where there is one
        said = str(driver_error).strip().splitlines()[0] if driver_error is not None else type(e).__name__
        missing = "no such table" in said or ("relation" in said and "does not exist" in said)
        hint = "; run `mdmq db upgrade` first" if missing else ""
        print(f"mdmq: the database refused: {said}{hint}", file=sys.stderr)
        sys.exit(EXIT_DATABASE)
