"""The urgent lane: a worker process of its own for the urgent queue (and the paced lane's tokens).

Dramatiq's worker threads take messages from one work queue ordered by priority: an urgent message (a lock,
a wipe, a device's report, the answers of a chunk) goes before every bulk message a process has prefetched,
but only once one of its threads is free, and then it runs under the same interpreter lock as the threads
pushing a rollout's chunks. Threads of its own in each process removed the first wait, not the second (see
docs/performance.md, "The urgent lane's own process"). So `mdmq worker` starts one worker process more than
`--processes` (`workers.launch.with_urgent_lane`), which takes only the urgent queue, with
`MDMQ_WORKER_URGENT_THREADS` threads for each bulk process; the others take only the bulk queue. Dramatiq
starts, watches and stops it with them. It takes the paced lane's tokens too (`workers.broker.PACED_QUEUE`),
from a queue of their own, below its urgent work: a paced chunk waits for no rollout's either.

In that process this middleware
- looks at the urgent queue more often when it is idle (`MDMQ_WORKER_URGENT_POLL_MS`, not
  `MDMQ_WORKER_POLL_MS`): a Redis consumer with nothing to take sleeps up to the worker's timeout between
  looks, and that sleep is the whole wait of a lock sent to an idle lane;
- stops last. Dramatiq asks every process of the command to stop at once (a deploy, or one of them died),
  and a bulk process may take minutes to finish its chunks; a lock sent meanwhile must not wait for the
  command's restart. So the lane's first SIGTERM lets it go on until every bulk process of the command has
  exited, then stops it as Dramatiq would; a second stops it at once.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import dramatiq

log = logging.getLogger(__name__)

Handler = Callable[[int, FrameType | None], Any]


class UrgentLane(dramatiq.Middleware):
    """The urgent lane's process: its worker's idle poll is `poll_ms` at most, and it stops once the
    processes `bulk_processes` names have exited."""

    def __init__(self, *, poll_ms: int, bulk_processes: Callable[[], list[int]] = list) -> None:
        self.poll_ms = poll_ms
        self.bulk_processes = bulk_processes
        self._draining = False

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        worker.worker_timeout = self.poll_ms  # read when its consumers start, after this hook
        queues = sorted(worker.consumer_whitelist or ())
        log.info("the urgent lane's process: %d threads on %s", worker.worker_threads, queues)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        stop = signal.getsignal(signal.SIGTERM)  # Dramatiq's worker process set it: stop, then kill
        if callable(stop) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._stop_last(stop))

    def _stop_last(self, stop: Handler) -> Handler:
        def asked_to_stop(signum: int, frame: FrameType | None) -> None:
            if self._draining:
                stop(signum, frame)  # asked again: stop now
                return
            self._draining = True
            pids = self.bulk_processes()
            log.info("the urgent lane stops once the %d bulk processes have exited", len(pids))

            def stop_once_they_exited() -> None:
                wait_for_exits(pids)
                stop(signum, None)

            threading.Thread(target=stop_once_they_exited, name="mdmq-urgent-lane-stop", daemon=True).start()

        return asked_to_stop


def wait_for_exits(pids: Sequence[int]) -> None:
    """Until every process of `pids` has exited, woken by the kernel (Linux pidfds), not by polling; at once
    where pidfds are not to be had."""
    fds: list[int] = []
    try:
        for pid in pids:
            try:
                fds.append(os.pidfd_open(pid))
            except ProcessLookupError:
                continue  # gone already
        while fds:
            ready, _, _ = select.select(fds, [], [])
            for fd in ready:
                fds.remove(fd)
                os.close(fd)
    except (AttributeError, OSError) as e:  # no pidfd_open here, or refused: stop without waiting
        log.warning("the urgent lane cannot wait for the bulk processes (%s): it stops now", e)
    finally:
        for fd in fds:
            os.close(fd)
