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


def main() -> None:
    try:
        app()
    except SettingsError as e:
        # A wrong setting is an operator's typo, not a crash: one line that names the variable.
        print(f"mdmq: invalid configuration: {e}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
