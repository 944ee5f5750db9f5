"""How the worker processes are started: `mdmq worker` and the demo both come through here.

Dramatiq forks the worker processes; prometheus_client's multiprocess mode lets each write its metrics to a
file of its own in one directory, and Dramatiq's exposition server (a process of its own, on
`MDMQ_WORKER_METRICS_PORT`) serves their sum. The directory must be named before any of them imports
prometheus_client, so the launcher sets it, and empties it: files of processes of an earlier run would be
summed in as if they were alive.

`python -m workers.launch` is the `dramatiq` command with mdmq's logging: its main process and the processes
it forks write the process's log format (JSON in production), not Dramatiq's text lines.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from config.logging import configure_logging
from config.settings import Settings, load_settings
from workers.broker import BULK_QUEUE

WORKER_MODULE = "workers.main:broker"
LAUNCHER = "workers.launch"


def metrics_dir(settings: Settings) -> Path:
    if settings.metrics_dir:
        return Path(settings.metrics_dir)
    return Path(tempfile.gettempdir()) / f"mdmq-worker-metrics-{settings.worker_metrics_port}"


def prepare_metrics_dir(settings: Settings) -> Path:
    """The multiprocess directory, created and emptied (only its metric files: it may be a mounted volume)."""
    directory = metrics_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    return directory


def worker_environment(settings: Settings, base: Mapping[str, str]) -> dict[str, str]:
    """`base` with the multiprocess directory, Dramatiq's exposition server and its idle poll (the
    `dramatiq` command reads the worker timeout only from its environment) set from `settings`."""
    directory = str(prepare_metrics_dir(settings))
    return dict(base) | {
        "PROMETHEUS_MULTIPROC_DIR": directory,
        "dramatiq_prom_db": directory,
        "dramatiq_prom_host": settings.metrics_host,
        "dramatiq_prom_port": str(settings.worker_metrics_port),
        "dramatiq_worker_timeout": str(settings.worker_poll_ms),
    }


def worker_command(processes: int, threads: int, *, urgent_threads: int) -> list[str]:
    """This launcher's argv: then Dramatiq's arguments, its own logging set-up skipped. With `urgent_threads`
    (`MDMQ_WORKER_URGENT_THREADS`, which the processes read too) the `threads` consume the bulk queue only,
    and each process gives the urgent queue threads of its own (`workers.urgent_lane`)."""
    lanes = ["--queues", BULK_QUEUE] if urgent_threads > 0 else []
    return [
        sys.executable,
        "-m",
        LAUNCHER,
        WORKER_MODULE,
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--skip-logging",
        *lanes,
    ]


def run_dramatiq(arguments: Sequence[str]) -> int:
    """Dramatiq's command line, after mdmq's logging is set up: the forked processes inherit it, and the
    worker processes set it up again when they import `workers.main` (on Dramatiq's pipe to this one)."""
    from dramatiq.cli import main, make_argument_parser

    settings = load_settings()
    configure_logging(level=settings.log_level, json_lines=settings.json_logs)
    parser = make_argument_parser()  # type: ignore[no-untyped-call]  # Dramatiq declares no types for it
    code: int = main(parser.parse_args(list(arguments)))  # type: ignore[no-untyped-call]
    return code


if __name__ == "__main__":
    sys.exit(run_dramatiq(sys.argv[1:]))
