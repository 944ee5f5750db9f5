"""The worker process: `dramatiq workers.main:broker` (the Procfile's `worker`).

Builds the process's parts from `MDMQ_*` settings and declares the actors on its broker. Name the broker:
without `:broker`, the dramatiq command consumes from its own default broker instead.
"""

from __future__ import annotations

from config.app import App
from config.logging import configure_logging
from config.sentry import init_sentry
from workers.actors import declare_actors

app = App()
configure_logging(level=app.settings.log_level, json_lines=app.settings.json_logs)
init_sentry(app.settings, process="worker")  # before the broker exists: Dramatiq's integration hooks it
actors = declare_actors(app)
broker = app.broker
