"""Worker threads of their own for the urgent queue.

Dramatiq's worker threads take messages from one work queue ordered by priority: an urgent message (a lock,
a wipe, a device's report, the answers of a chunk) goes before every bulk message a process has prefetched,
but only once one of its threads is free. With every thread pushing a rollout's chunk, a lock waited for the
first chunk to end. So a process that `mdmq worker` starts consumes the bulk queue with its `--threads`
(`--queues bulk`), and the urgent queue with `MDMQ_WORKER_URGENT_THREADS` threads beside them that take
nothing else: urgent work never waits for bulk work, and bulk work keeps every thread it was given.

Dramatiq advises one `Worker` per process; a second one is sound here because its queues are disjoint from
the first's (no message is consumed twice, each worker prefetches for its own threads), and the process-wide
middlewares (time limits, shutdown notifications, metrics) hook the process and the messages, not a worker.
The urgent worker starts once the process's worker has booted and stops after it has shut down: while a
stopping process finishes its last chunks, its urgent threads still take locks.
"""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.common import q_name

from workers.broker import URGENT_QUEUE

log = logging.getLogger(__name__)


def consumes_urgent(worker: dramatiq.Worker) -> bool:
    """Whether `worker` takes urgent messages itself (it listens on every queue, or on the urgent one)."""
    queues = worker.consumer_whitelist
    return not queues or URGENT_QUEUE in {q_name(q) for q in queues}


class UrgentThreads(dramatiq.Middleware):
    """Starts the urgent queue's own worker (`threads` threads) beside a process's worker that does not
    consume the urgent queue, and stops it once that worker has shut down."""

    def __init__(self, threads: int, *, worker_timeout_ms: int) -> None:
        self.threads = threads
        self.worker_timeout_ms = worker_timeout_ms
        self.urgent: dramatiq.Worker | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if worker is self.urgent or consumes_urgent(worker):
            return
        if self.threads < 1:
            log.error("this worker does not consume the %r queue and has no threads for it", URGENT_QUEUE)
            return
        self.urgent = dramatiq.Worker(
            broker,
            queues={URGENT_QUEUE},
            worker_threads=self.threads,
            worker_timeout=self.worker_timeout_ms,
        )
        self.urgent.start()
        log.info("the %r queue has %d worker threads of its own", URGENT_QUEUE, self.threads)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        urgent, self.urgent = self.urgent, None
        if urgent is None or worker is urgent:
            return
        urgent.stop()
