"""The worker process: `python -m workers.launch workers.main:broker`, Dramatiq's command with mdmq's logging
(the Procfile's `worker`).

Builds the process's parts from `MDMQ_*` settings and declares the actors on its broker. Name the broker:
without `:broker`, the dramatiq command consumes from its own default broker instead. Start it with
`mdmq worker`, which names the metrics directory first (`workers.launch`); then Dramatiq's Prometheus
middleware serves the metrics of every worker process on `MDMQ_WORKER_METRICS_PORT`.
"""

from __future__ import annotations

import logging
import os

from config.logging import configure_logging
from config.sentry import init_sentry
from workers.actors import declare_actors
from workers.app import App
from workers.launch import bulk_processes
from workers.queues import WorkerPresence
from workers.urgent_lane import UrgentLane
from workers.warm_up import WarmUp

app = App()
configure_logging(level=app.settings.log_level, json_lines=app.settings.json_logs)
init_sentry(app.settings, process="worker")  # before the broker exists: Dramatiq's integration hooks it
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    from workers.prometheus import WorkerMetrics  # Dramatiq's reads its settings from the environment

    app.broker.add_middleware(WorkerMetrics())
else:
    logging.getLogger(__name__).warning("no metrics directory: start the workers with `mdmq worker`")
app.broker.add_middleware(WarmUp(app))  # each process connects and compiles before its threads start
urgent_lane = app.settings.worker_urgent_lane  # the process `mdmq worker` started for the urgent queue
app.broker.add_middleware(WorkerPresence(lane="urgent" if urgent_lane else None))  # for the operator's page
if urgent_lane:
    app.broker.add_middleware(
        UrgentLane(poll_ms=app.settings.worker_urgent_poll_ms, bulk_processes=bulk_processes)
    )
actors = declare_actors(app)
broker = app.broker
