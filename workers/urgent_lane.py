"""The urgent lane: a worker process of its own for the urgent queue.

Dramatiq's worker threads take messages from one work queue ordered by priority: an urgent message (a lock,
a wipe, a device's report, the answers of a chunk) goes before every bulk message a process has prefetched,
but only once one of its threads is free, and then it runs under the same interpreter lock as the threads
pushing a rollout's chunks. Threads of its own in each process removed the first wait, not the second (see
docs/performance.md, "Fair share"). So `mdmq worker` starts one worker process more than `--processes`
(`workers.launch.with_urgent_lane`), which takes only the urgent queue, with `MDMQ_WORKER_URGENT_THREADS`
threads; the others take only the bulk queue. Dramatiq starts, watches and stops it with them.

In that process this middleware looks at the urgent queue more often when it is idle
(`MDMQ_WORKER_URGENT_POLL_MS`, not `MDMQ_WORKER_POLL_MS`): a Redis consumer with nothing to take sleeps up
to the worker's timeout between looks, and that sleep is the whole wait of a lock sent to an idle lane.
"""

from __future__ import annotations

import logging

import dramatiq

log = logging.getLogger(__name__)


class UrgentLane(dramatiq.Middleware):
    """The urgent lane's process: its worker's idle poll is `poll_ms` at most."""

    def __init__(self, *, poll_ms: int) -> None:
        self.poll_ms = poll_ms

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        worker.worker_timeout = self.poll_ms  # read when its consumers start, after this hook
        queues = sorted(worker.consumer_whitelist or ())
        log.info("the urgent lane's process: %d threads on %s", worker.worker_threads, queues)
