"""`mdmq worker`'s environment reaches the `dramatiq` command it starts, and its lanes their processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from config.settings import Settings
from workers.broker import BULK_QUEUE, PACED_QUEUE, URGENT_QUEUE
from workers.launch import (
    launcher_arguments,
    parse_arguments,
    urgent_lane_arguments,
    worker_command,
    worker_environment,
)
from workers.urgent_lane import UrgentLane, wait_for_exits

# What the `dramatiq` command's Worker gets, built as the command builds it: with no timeout given.
_PRINT_WORKER_TIMEOUT = (
    "from dramatiq import Worker; from dramatiq.brokers.stub import StubBroker; "
    "print(Worker(StubBroker()).worker_timeout)"
)


def test_the_idle_poll_setting_is_the_worker_timeout_dramatiq_reads(tmp_path: Path) -> None:
    """Dramatiq's command has no option for it: only its environment sets how long an idle consumer sleeps."""
    settings = Settings(worker_poll_ms=300, metrics_dir=str(tmp_path))
    environment = worker_environment(settings, os.environ)

    read = subprocess.run(
        [sys.executable, "-c", _PRINT_WORKER_TIMEOUT],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )

    assert read.stdout.strip() == "300"
    assert Settings().worker_poll_ms == 250, "below Dramatiq's 1,000 ms"


def test_urgent_threads_add_one_process_that_takes_the_urgent_queue_alone() -> None:
    command = worker_command(processes=2, threads=8, urgent_threads=3)
    args = parse_arguments(launcher_arguments(command))

    assert args.processes == 3, "the two bulk processes and the urgent lane's"
    assert [urgent_lane_arguments(args, worker_id) is None for worker_id in range(3)] == [True, True, False]
    assert (args.queues, args.threads) == ([BULK_QUEUE], 8)
    urgent = urgent_lane_arguments(args, 2)
    assert urgent is not None
    assert (urgent.queues, urgent.threads) == ([URGENT_QUEUE, PACED_QUEUE], 6), "3 for each bulk process"
    assert (args.queues, args.threads) == ([BULK_QUEUE], 8), "the bulk processes' arguments unchanged"


def test_no_urgent_threads_no_lane_every_process_takes_both_queues() -> None:
    command = worker_command(processes=2, threads=8, urgent_threads=0)
    args = parse_arguments(launcher_arguments(command))

    assert (args.processes, args.queues) == (2, None)
    assert urgent_lane_arguments(args, 1) is None


def test_the_urgent_lane_looks_at_its_idle_queue_at_its_own_poll() -> None:
    worker = Worker(StubBroker(), worker_timeout=250)

    UrgentLane(poll_ms=40).before_worker_boot(worker.broker, worker)

    assert worker.worker_timeout == 40


def test_the_bulk_lane_is_niced_and_the_urgent_lanes_pool_no_larger_than_its_threads() -> None:
    command = worker_command(processes=1, threads=8, urgent_threads=2)
    args = parse_arguments(launcher_arguments(command), bulk_nice=7, pool_size=5)

    # 2 threads: a pool of 1, which opens 1 more under load (max_overflow): a connection for each thread.
    assert (args.urgent_lane.bulk_nice, args.urgent_lane.pool_size) == (7, 1)
    assert Settings().worker_bulk_nice == 5
    wide = parse_arguments(launcher_arguments(worker_command(4, 8, urgent_threads=2)), pool_size=3)
    assert (wide.urgent_lane.threads, wide.urgent_lane.pool_size) == (8, 3), "never larger than the setting"


def _waiting_child() -> subprocess.Popen[bytes]:
    """A process that runs until its stdin closes."""
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)


def test_waiting_for_exits_returns_only_once_every_process_has_exited() -> None:
    first, second = _waiting_child(), _waiting_child()
    gone = 2**22 + 1  # above the kernel's pid_max: no such process, so none to wait for
    waiter = threading.Thread(target=wait_for_exits, args=([first.pid, second.pid, gone],))
    try:
        waiter.start()
        assert first.stdin is not None
        assert second.stdin is not None
        first.stdin.close()
        first.wait()
        waiter.join(timeout=0.5)
        assert waiter.is_alive(), "one of the two is still running"
        second.stdin.close()
        second.wait()
        waiter.join(timeout=30)
        assert not waiter.is_alive(), "both have exited"
    finally:
        for process in (first, second):
            process.kill()
            process.wait()
