"""A worker process readies itself before it takes its first message.

A process that has just started has no database connection, has compiled none of its statements, and the
PostgreSQL backends it will open have not read the tables' catalogs yet. Left to the first messages, all of
that is paid by the first chunks of the next rollout, by every worker thread at once. Instead, before its
worker threads start, the process opens the connections its threads will use (up to the pool's size) and
runs the dispatch statements on them, for a deployment that does not exist: nothing is claimed, pushed or
written.

If the database is away at boot, the process starts anyway and connects when it returns.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import dramatiq

from models.database import DATABASE_ERRORS
from workers.app import App
from workers.services.dispatch import dispatch_chunk

log = logging.getLogger(__name__)

# No deployment has this id: the warm-up's claim takes nothing, and no push goes out.
NO_DEPLOYMENT = "warm-up"
WARM_UP_TIMEOUT_S = 10.0


def warm_up(app: App, threads: int, *, timeout_s: float = WARM_UP_TIMEOUT_S) -> int:
    """Open the connections of `threads` worker threads (no more than the pool keeps) and run the dispatch
    statements on them; returns how many connections are ready. A database that is down or does not
    answer delays the process no more than `timeout_s`, and the workers start without it."""
    ready: list[int] = []
    runner = threading.Thread(
        target=lambda: ready.append(_warm_up(app, threads)), name="warm-up", daemon=True
    )
    runner.start()
    runner.join(timeout_s)
    if not ready:
        log.warning("worker warm-up: the database did not answer within %.0f s; going on", timeout_s)
    return ready[0] if ready else 0


def _warm_up(app: App, threads: int) -> int:
    engine = app.engine
    wanted = min(threads, app.settings.database_pool_size)
    try:
        with ExitStack() as opened:  # all at once, so each is a connection of its own; then into the pool
            for _ in range(wanted):
                opened.enter_context(engine.connect())
        with ThreadPoolExecutor(wanted, thread_name_prefix="warm-up") as pool:
            for _ in pool.map(_dispatch_nothing, [app] * wanted):
                pass
    except DATABASE_ERRORS as e:
        log.warning("worker warm-up: the database did not answer (%s); going on", type(e).__name__)
        return 0
    return wanted


def _dispatch_nothing(app: App) -> None:
    dispatch_chunk(app.session, app.gateway, [NO_DEPLOYMENT], policy=app.policy)


class WarmUp(dramatiq.Middleware):
    """Warms the worker process up before its worker threads start (`warm_up`)."""

    def __init__(self, app: App) -> None:
        self.app = app

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        started = time.monotonic()
        ready = warm_up(self.app, worker.worker_threads)
        log.info("worker warm-up: %d connections ready in %.2f s", ready, time.monotonic() - started)
