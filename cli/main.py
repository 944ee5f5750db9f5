"""`mdmq`: the command that runs mdmq's processes and answers ops questions."""

from __future__ import annotations

import sys

import typer

from config import SettingsError, load_settings
from config.logging import configure_logging

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="mdmq: MDM deployments, pushes and retries."
)
db = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(db, name="db")

EXIT_CONFIG = 2


@db.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Alembic revision to migrate to.")) -> None:
    """Migrate the database of MDMQ_DATABASE_URL to the newest schema (or REVISION)."""
    from models.migrations.runner import upgrade

    settings = load_settings()
    configure_logging(level=settings.log_level, json_lines=settings.json_logs)
    upgrade(settings.database_url, revision)
    typer.echo(f"database at {revision}")


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
def sandbox(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    apns_port: int = typer.Option(2197, help="APNs emulator port (0: any free port)."),
    fcm_port: int = typer.Option(2198, help="FCM emulator port (0: any free port)."),
    aosp_port: int = typer.Option(2199, help="AOSP (Pushy-style) emulator port (0: any free port)."),
    tls: bool = typer.Option(False, "--tls", help="HTTP/2 over TLS with a throw-away CA instead of h2c."),
) -> None:
    """Run the APNs, FCM and AOSP emulators until stopped. They accept any device and credential."""
    from sandbox import serve_forever

    configure_logging(level=load_settings().log_level)
    serve_forever(host, apns_port, fcm_port, aosp_port, tls)


def main() -> None:
    try:
        app()
    except SettingsError as e:
        # A wrong setting is an operator's typo, not a crash: one line that names the variable.
        print(f"mdmq: invalid configuration: {e}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
