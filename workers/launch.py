"""How the worker processes are started: `mdmq worker` and the demo both come through here.

Dramatiq forks the worker processes; prometheus_client's multiprocess mode lets each write its metrics to a
file of its own in one directory, and Dramatiq's exposition server (a process of its own, on
`MDMQ_WORKER_METRICS_PORT`) serves their sum. The directory must be named before any of them imports
prometheus_client, so the launcher sets it, and empties it: files of processes of an earlier run would be
summed in as if they were alive.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from config.settings import Settings

WORKER_MODULE = "workers.main:broker"


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


def worker_command(processes: int, threads: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dramatiq",
        WORKER_MODULE,
        "--processes",
        str(processes),
        "--threads",
        str(threads),
    ]
