"""The scheduler process: APScheduler runs the lease renewal always, and the jobs only while this process
leads. Every run is recorded in `scheduler_run` after the lease is confirmed in the same transaction."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from datetime import UTC
from types import FrameType

import sentry_sdk
from apscheduler.schedulers.blocking import BlockingScheduler
from prometheus_client import Counter, Gauge
from sentry_sdk.crons import capture_checkin

from config.logging import log_context
from models.store.runs import finish_run, start_run
from models.types import utcnow
from scheduler import gauges
from scheduler.jobs import JOBS, Job
from scheduler.lease import STILL_LEADING, Lease
from workers.actors import declare_actors
from workers.app import App
from workers.enqueue import BrokerAway

log = logging.getLogger(__name__)

STANDBY_REPORT_S = 300.0  # a standby says who leads this often, so that its log shows it alive

LEADER = Gauge("mdmq_scheduler_leader", "1 while this scheduler process holds the leader lease, else 0.")
# `scheduler_job`, not `job`: Prometheus gives every target a `job` label of its own.
JOB_LAST_SUCCESS = Gauge(
    "mdmq_scheduler_job_last_success_timestamp_seconds",
    "Unix time of the job's last successful run in this process.",
    ["scheduler_job"],
)
JOB_DURATION = Gauge(
    "mdmq_scheduler_job_duration_seconds", "How long the job's last run took.", ["scheduler_job"]
)
JOB_INTERVAL = Gauge(
    "mdmq_scheduler_job_interval_seconds",
    "How often the job is meant to run: an alert compares the age of its last success with this.",
    ["scheduler_job"],
)
JOB_RUNS = Counter(
    "mdmq_scheduler_job_runs_total", "Job runs by outcome (ok, error).", ["scheduler_job", "outcome"]
)


class Scheduler:
    def __init__(
        self,
        app: App,
        *,
        jobs: tuple[Job, ...] = JOBS,
        lease: Lease | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.actors = declare_actors(app)
        self.jobs = jobs
        self.lease = lease or Lease(app.session, period_s=app.settings.scheduler_lease_s)
        self._leading = False
        self._clock = clock
        self._standby_said_at: float | None = None  # monotonic; None: say it at the next refresh
        for job in jobs:  # at 0 from the first scrape, so that the first error shows in rate()
            for outcome in ("ok", "error"):
                JOB_RUNS.labels(scheduler_job=job.name, outcome=outcome)
        self._aps = BlockingScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    def run_forever(self) -> None:
        """Until SIGTERM or SIGINT; then the lease is released so that a standby takes over at once."""
        now = utcnow()
        self._aps.add_job(self.refresh_lease, "interval", seconds=self.lease.renew_every_s, next_run_time=now)
        for job in self.jobs:
            seconds = job.every_s(self.actors)
            JOB_INTERVAL.labels(scheduler_job=job.name).set(seconds)
            self._aps.add_job(
                self.run_job, "interval", args=[job], seconds=seconds, id=job.name, name=job.name
            )
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        log.info("scheduler %s started: %d jobs", self.lease.holder, len(self.jobs))
        try:
            self._aps.start()
        finally:
            self.lease.release()
            LEADER.set(0)
            gauges.clear()
            self.app.close()

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        """Stop leading at once (a running job ends at its next page), let running jobs end, then the lease
        is released: a standby never starts a job while one of ours still runs."""
        log.info("scheduler %s stopping (signal %d)", self.lease.holder, signum)
        self.lease.stand_down()
        self._aps.shutdown(wait=True)

    def refresh_lease(self) -> None:
        """Take or renew the lease; a new leader runs every job now, a standby says who leads every
        `STANDBY_REPORT_S`."""
        was_leading, leading = self._leading, self.lease.refresh()
        self._leading = leading
        LEADER.set(1 if leading else 0)
        if not leading:
            gauges.clear()  # only the leader's counts are scraped
            self._report_standby()
            return
        self._standby_said_at = None  # should it lose the lease, it says so at once
        if not was_leading:
            # A new leader runs every job now rather than an interval from now: the gauges and the
            # certificate watch (hourly) must not wait for their first figures.
            for job in self.jobs:
                self._aps.modify_job(job.name, next_run_time=utcnow())

    def run_job(self, job: Job) -> bool:
        """Run `job` once if this process leads; returns whether it ran. Failures are logged, counted and
        recorded, never raised: the next run tries again."""
        if not self.lease.leading():
            return False
        started = utcnow()
        with self.app.session() as s:
            if not self.lease.confirm(s, started):
                LEADER.set(0)
                gauges.clear()
                return False
            run_id = start_run(s, job=job.name, holder=self.lease.holder, started_at=started)
        check_in = _check_in(job.name, "in_progress")
        clock = time.monotonic()
        work, error = None, None
        leading = STILL_LEADING.set(self.lease.leading)
        try:
            with log_context(action=f"scheduler.{job.name}"):
                work = job.run(self.actors, started)
        except BrokerAway as e:  # the rows stay as they were: the next run sends them; no traceback
            log.warning("scheduler job %s: the broker is away (%s); the next run tries again", job.name, e)
            error = f"{type(e).__name__}: {e}"[:1_000]
        except Exception as e:
            log.exception("scheduler job %s failed", job.name)
            error = f"{type(e).__name__}: {e}"[:1_000]
        finally:
            STILL_LEADING.reset(leading)
        seconds = time.monotonic() - clock
        with self.app.session() as s:
            finish_run(s, run_id=run_id, finished_at=utcnow(), work=work, error=error)
        outcome = "ok" if error is None else "error"
        _check_in(job.name, outcome, check_in, seconds)
        JOB_RUNS.labels(scheduler_job=job.name, outcome=outcome).inc()
        JOB_DURATION.labels(scheduler_job=job.name).set(seconds)
        if error is None:
            JOB_LAST_SUCCESS.labels(scheduler_job=job.name).set(time.time())
        fields = {
            "scheduler_job": job.name,
            "outcome": outcome,
            "work": work,
            "duration_ms": round(seconds * 1000),
        }
        log.info("scheduler job %s %s: %s rows in %.3f s", job.name, outcome, work, seconds, extra=fields)
        return True

    def _report_standby(self) -> None:
        """One line saying this process stands by, who leads and until when; again every
        `STANDBY_REPORT_S`."""
        now = self._clock()
        if self._standby_said_at is not None and now - self._standby_said_at < STANDBY_REPORT_S:
            return
        self._standby_said_at = now
        row = self.lease.leader()
        if row is None:
            log.info(
                "scheduler %s standing by: nobody holds the lease",
                self.lease.holder,
                extra={"state": "standby"},
            )
            return
        holder, expires_at = row
        fields = {"state": "standby", "leader": holder, "lease_expires_at": expires_at.isoformat()}
        how = "leads, its lease expires" if expires_at > utcnow() else "held the lease, which expired"
        log.info(
            "scheduler %s standing by: %s %s at %s",
            self.lease.holder, holder, how, expires_at.isoformat(timespec="seconds"), extra=fields,
        )  # fmt: skip


def _check_in(
    job: str, status: str, check_in_id: str | None = None, seconds: float | None = None
) -> str | None:
    """A Sentry cron check-in for the job, when Sentry is configured."""
    if not sentry_sdk.get_client().is_active():
        return None
    return capture_checkin(
        monitor_slug=f"mdmq-scheduler-{job}", check_in_id=check_in_id, status=status, duration=seconds
    )
