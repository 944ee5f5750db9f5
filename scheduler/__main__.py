"""`python -m scheduler`: the scheduler process (the Procfile's `scheduler`)."""

from __future__ import annotations

from prometheus_client import start_http_server

from config.logging import configure_logging
from config.sentry import init_sentry
from scheduler.runner import Scheduler
from workers.app import App


def main() -> None:
    app = App()
    configure_logging(level=app.settings.log_level, json_lines=app.settings.json_logs)
    init_sentry(app.settings, process="scheduler")
    settings = app.settings
    scheduler = Scheduler(app)  # first: its series at 0 are in the first scrape
    start_http_server(settings.scheduler_metrics_port, addr=settings.metrics_host)  # /metrics, on a thread
    scheduler.run_forever()


if __name__ == "__main__":
    main()
