"""Dramatiq's Prometheus middleware, with every series at 0 for every actor from the start.

Dramatiq creates a counter's series the first time it counts: a worker that never failed a message exports
no `dramatiq_message_errors_total` at all, and `rate()` over a series that appears at its first error misses
that error. Every queue and actor of the broker gets its series at boot instead.
"""

from __future__ import annotations

import dramatiq
from dramatiq.middleware.prometheus import Prometheus


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
