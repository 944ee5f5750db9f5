"""How the worker processes are started: `mdmq worker` and the demo both come through here.

Dramatiq forks the worker processes; prometheus_client's multiprocess mode lets each write its metrics to a
file of its own in one directory, and Dramatiq's exposition server (a process of its own, on
`MDMQ_WORKER_METRICS_PORT`) serves their sum. The directory must be named before any of them imports
prometheus_client, so the launcher sets it, and empties it: files of processes of an earlier run would be
summed in as if they were alive.

`python -m workers.launch` is the `dramatiq` command with mdmq's logging: its main process and the processes
it forks write the process's log format (JSON in production), not Dramatiq's text lines. With
`--urgent-threads N` it starts one worker process more than `--processes`, the urgent lane's
(`workers.urgent_lane`): the others take the bulk queue alone, it takes the urgent queue and the paced lane's
tokens with N threads.
"""

from __future__ import annotations

import argparse
import copy
import math
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dramatiq import cli as dramatiq_cli

from config.logging import configure_logging
from config.settings import Settings, load_settings
from workers.broker import BULK_QUEUE, PACED_QUEUE, URGENT_QUEUE

WORKER_MODULE = "workers.main:broker"
LAUNCHER = "workers.launch"
URGENT_THREADS_FLAG = "--urgent-threads"
# Set in the urgent lane's process only (`Settings.worker_urgent_lane`).
URGENT_LANE_VARIABLE = "MDMQ_WORKER_URGENT_LANE"
POOL_SIZE_VARIABLE = "MDMQ_DATABASE_POOL_SIZE"
# In the urgent lane's process: where the command's bulk processes write their pids (`bulk_processes`).
_bulk_pids: Any = None
# Dramatiq's own, taken when this module is first imported: before `run_dramatiq` puts `worker_process` in
# its place, and again in a process that a spawn start method imports afresh.
_dramatiq_worker_process = dramatiq_cli.worker_process


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
    (`MDMQ_WORKER_URGENT_THREADS`) the `processes` and their `threads` take the bulk queue alone, and one
    process more, the urgent lane's, takes the urgent and paced queues with `urgent_threads` threads for each
    of them. With none, every thread takes every queue, urgent first."""
    lanes = [URGENT_THREADS_FLAG, str(urgent_threads), "--queues", BULK_QUEUE] if urgent_threads > 0 else []
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


@dataclass(frozen=True)
class UrgentLane:
    """Which worker processes of the command are the urgent lane's (ids from `first`), their threads, and
    the niceness the others, the bulk lane's, add to their own."""

    first: int
    threads: int
    bulk_nice: int = 0
    # The lane's database pool: half its threads, since a pool opens as many again under load (SQLAlchemy's
    # max_overflow), or the setting when smaller; None, as the others'.
    pool_size: int | None = None


def with_urgent_lane(
    args: argparse.Namespace, threads: int, *, bulk_nice: int = 0, pool_size: int | None = None
) -> argparse.Namespace:
    """Dramatiq's parsed arguments with one worker process more, the urgent lane's (`worker_process`)."""
    lane = copy.copy(args)
    pool = None if pool_size is None else min(pool_size, math.ceil(threads / 2))
    lane.urgent_lane = UrgentLane(first=args.processes, threads=threads, bulk_nice=bulk_nice, pool_size=pool)
    lane.processes = args.processes + 1
    return lane


def bulk_processes() -> list[int]:
    """In the urgent lane's process: the pids of the command's bulk processes (none elsewhere)."""
    return [pid for pid in (_bulk_pids or ()) if pid]


def urgent_lane_arguments(args: argparse.Namespace, worker_id: int) -> argparse.Namespace | None:
    """The arguments of worker process `worker_id` when it is the urgent lane's: the urgent queue and the
    paced lane's tokens, with the lane's threads."""
    lane: UrgentLane | None = getattr(args, "urgent_lane", None)
    if lane is None or worker_id < lane.first:
        return None
    urgent = copy.copy(args)
    urgent.queues, urgent.threads = [URGENT_QUEUE, PACED_QUEUE], lane.threads
    return urgent


def worker_process(args: argparse.Namespace, worker_id: int, *rest: Any) -> None:
    """Dramatiq's worker process; the urgent lane's (`with_urgent_lane`) takes the urgent and paced queues,
    with its own threads, and the bulk lane's yield the CPU to it (`MDMQ_WORKER_BULK_NICE`). Dramatiq starts,
    watches and stops it with the others: should it die, the command stops every process, and its
    supervisor starts them all again, as for any worker process. Asked to stop, it stops last
    (`workers.urgent_lane`), from the pids the bulk processes write in `args.bulk_pids`."""
    global _bulk_pids  # noqa: PLW0603  (the lane's process reads it later: `bulk_processes`)
    urgent = urgent_lane_arguments(args, worker_id)
    bulk_pids = getattr(args, "bulk_pids", None)
    if urgent is not None:
        args = urgent
        os.environ[URGENT_LANE_VARIABLE] = "true"  # before the process imports the worker module
        if (pool := args.urgent_lane.pool_size) is not None:  # its few threads need no more connections
            os.environ[POOL_SIZE_VARIABLE] = str(pool)
        _bulk_pids = bulk_pids
    elif (lane := getattr(args, "urgent_lane", None)) is not None:
        if bulk_pids is not None:
            bulk_pids[worker_id] = os.getpid()
        if lane.bulk_nice:
            os.nice(lane.bulk_nice)
    _dramatiq_worker_process(args, worker_id, *rest)  # type: ignore[no-untyped-call]  # untyped in Dramatiq


def run_dramatiq(arguments: Sequence[str]) -> int:
    """Dramatiq's command line, after mdmq's logging is set up: the forked processes inherit it, and the
    worker processes set it up again when they import `workers.main` (on Dramatiq's pipe to this one)."""
    settings = load_settings()
    configure_logging(level=settings.log_level, json_lines=settings.json_logs)
    args = parse_arguments(
        arguments, bulk_nice=settings.worker_bulk_nice, pool_size=settings.database_pool_size
    )
    if (lane := getattr(args, "urgent_lane", None)) is not None:
        # Each bulk process writes its pid here: the lane stops only once they have all exited.
        args.bulk_pids = multiprocessing.Array("i", lane.first, lock=False)
        # Dramatiq's main starts each worker process on this module-level name: ours picks the lane.
        dramatiq_cli.worker_process = worker_process
    code: int = dramatiq_cli.main(args)  # type: ignore[no-untyped-call]
    return code


def launcher_arguments(command: Sequence[str]) -> list[str]:
    """The arguments a `worker_command` gives this launcher (for `parse_arguments`)."""
    return list(command[command.index(LAUNCHER) + 1 :])


def parse_arguments(
    arguments: Sequence[str], *, bulk_nice: int = 0, pool_size: int | None = None
) -> argparse.Namespace:
    """Dramatiq's arguments from this launcher's, with the urgent lane's process when `--urgent-threads`
    gives it threads (its database pool at most `pool_size`, and `bulk_nice` for the others)."""
    ours = argparse.ArgumentParser(add_help=False)
    ours.add_argument(URGENT_THREADS_FLAG, type=int, default=0)
    own, rest = ours.parse_known_args(list(arguments))
    parser = dramatiq_cli.make_argument_parser()  # type: ignore[no-untyped-call]  # Dramatiq declares no types
    args: argparse.Namespace = parser.parse_args(rest)
    if own.urgent_threads < 1:
        return args
    threads = own.urgent_threads * args.processes  # as many as when each process had its own
    return with_urgent_lane(args, threads, bulk_nice=bulk_nice, pool_size=pool_size)


if __name__ == "__main__":
    # From the module by its name, not `__main__`: the worker processes import `workers.launch` (the urgent
    # lane reads `bulk_processes` there), and a spawned one unpickles `worker_process` from it.
    from workers.launch import run_dramatiq as run

    sys.exit(run(sys.argv[1:]))
