"""Dramatiq's Prometheus middleware, with every series at 0 for every actor from the start.

Dramatiq creates a counter's series the first time it counts: a worker that never failed a message exports
no `dramatiq_message_errors_total` at all, and `rate()` over a series that appears at its first error misses
that error. Every queue and actor of the broker gets its series at boot instead.

Dramatiq's exposition server sums the processes' metric files and exports no process metrics (no
`process_resident_memory_bytes`): each worker process writes its own resident memory after every message,
and the server shows the largest of the live ones (`mdmq_worker_resident_memory_bytes`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware.prometheus import Prometheus
from prometheus_client import Gauge

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
RESIDENT_MEMORY = Gauge(
    "mdmq_worker_resident_memory_bytes",
    "Resident memory of the largest live worker process, after its last message.",
    multiprocess_mode="livemax",
)


def resident_memory_bytes() -> int:
    """This process's resident set size, as the kernel counts it now (Linux: /proc/self/statm)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE_BYTES


class WorkerMetrics(Prometheus):
    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        super().after_process_boot(broker)  # type: ignore[no-untyped-call]
        series = (
            self.total_messages,
            self.total_errored_messages,
            self.total_retried_messages,
            self.total_rejected_messages,
            self.inprogress_messages,
            self.inprogress_delayed_messages,
            self.message_durations,
        )
        for name in broker.get_declared_actors():
            actor = broker.get_actor(name)
            for metric in series:
                metric.labels(actor.queue_name, actor.actor_name)
        RESIDENT_MEMORY.set(resident_memory_bytes())

    def after_process_message(
        self, broker: dramatiq.Broker, message: MessageProxy, *, result: Any = None,
        exception: BaseException | None = None,
    ) -> None:  # fmt: skip
        super().after_process_message(broker, message, result=result, exception=exception)  # type: ignore[no-untyped-call]
        RESIDENT_MEMORY.set(resident_memory_bytes())
