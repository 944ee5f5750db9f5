"""The scheduler's jobs. Each is idempotent and bounded: it pages through its table at most `PAGES` pages of
`PAGE` rows a run, each page in a transaction of its own, and returns how many rows it moved, enqueued or
deleted. A second run right after finds nothing more to do."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from models.enums import CredentialStatus, Provider
from models.secrets import CannotDecrypt
from models.store.dispatch import push_credentials
from models.store.holds import purge_dead_answers
from models.store.idempotency import purge_expired_keys
from models.store.maintenance import purge_finished, stuck_counts
from models.store.receipts import ToPoll, receipts_to_poll, record_poll, record_untracked
from models.store.rollouts import purge_empty_rollouts
from models.store.runs import purge_runs
from models.store.sweeps import Due
from scheduler.certificates import watch_certificates
from scheduler.gauges import STUCK, gauges_job
from scheduler.holds import probe_holds_job
from scheduler.lease import still_leading
from workers.actors import Actors
from workers.broker import queue_backlog
from workers.fair import FairLaneName
from workers.providers.aosp import PushGone, PushStatus
from workers.providers.base import ProviderError
from workers.providers.credentials import InvalidCredential
from workers.services.credential_rows import credential_from_row
from workers.services.sweeps import relay_unenqueued, repush_unanswered, requeue_postponed

log = logging.getLogger(__name__)

PAGE = 1_000
PAGES = 200  # at most 200,000 rows a run, a page at a time; what is left is the next run's

# The most tokens one run of `fair_tokens` sends: tokens lost are the odd one, and a backlog that has its
# tokens queued already should cost no more than a hundred empty takes a run.
FAIR_TOKENS_PER_RUN = 100
_USABLE = frozenset({CredentialStatus.valid, CredentialStatus.expiring})
# Runs of the scheduler's own history older than this are purged.
RUNS_KEPT = timedelta(days=7)


@dataclass(frozen=True)
class Job:
    name: str
    run: Callable[[Actors, datetime], int]
    every_s: Callable[[Actors], float]


def _pages(actors: Actors, take: Callable[[datetime], list[Due]], now: datetime) -> int:
    """Take due deployments a page at a time, enqueue each page after its commit; stop at a short page."""
    done = 0
    for _ in range(PAGES):
        if not still_leading():
            break
        due = take(now)
        actors.enqueue(due)
        done += len(due)
        if len(due) < PAGE:
            break
    return done


def requeue_postponed_job(actors: Actors, now: datetime) -> int:
    def take(now: datetime) -> list[Due]:
        with actors.app.session() as s:
            return requeue_postponed(s, now=now, limit=PAGE)

    return _pages(actors, take, now)


def repush_job(actors: Actors, now: datetime) -> int:
    def take(now: datetime) -> list[Due]:
        with actors.app.session() as s:
            redeliver = actors.app.settings.redeliver_after_s
            return repush_unanswered(
                s, policy=actors.app.policy, now=now, redeliver_after_s=redeliver, limit=PAGE
            )

    return _pages(actors, take, now)


def relay_job(actors: Actors, now: datetime) -> int:
    grace_s = actors.app.settings.relay_grace_s

    def take(now: datetime) -> list[Due]:
        with actors.app.session() as s:
            return relay_unenqueued(s, now=now, grace_s=grace_s, limit=PAGE)

    return _pages(actors, take, now)


def stuck_job(actors: Actors, now: datetime) -> int:
    """Sets the stuck gauges from one aggregate query; returns how many deployments are stuck."""
    since = now - timedelta(seconds=actors.app.settings.stuck_after_s)
    with actors.app.session() as s:
        counts = stuck_counts(s, unchanged_since=since)
    for (kind, status), n in counts.items():
        STUCK.labels(kind=kind.value, status=status.value).set(n)
    return sum(counts.values())


def retention_job(actors: Actors, now: datetime) -> int:
    before = now - timedelta(days=actors.app.settings.retention_days)
    purged = 0
    for _ in range(PAGES):
        if not still_leading():
            break
        with actors.app.session() as s:
            n = purge_finished(s, finished_before=before, limit=PAGE)
        purged += n
        if n < PAGE:
            break
    with actors.app.session() as s:
        purged += purge_runs(s, started_before=now - RUNS_KEPT)
        purged += purge_dead_answers(s, before=before)
        purged += purge_expired_keys(s, before=now)
        purged += purge_empty_rollouts(s, created_before=before)
    return purged


def certificates_job(actors: Actors, now: datetime) -> int:
    """Returns how many certificates alerted this run (each threshold alerts once)."""
    return watch_certificates(actors.app, now)


def poll_receipts_job(actors: Actors, now: datetime) -> int:
    """Ask the AOSP push service where the pushes with devices still pending stand; returns how many
    receipts it polled. A push the service says it no longer tracks (INVALID_PUSH_ID) is polled no more and
    judged by its stored expiry, never as a failure; any other unanswered poll is tried again later."""
    app = actors.app
    polled_before = now - timedelta(seconds=app.settings.poll_interval_s / 2)
    with app.session() as s:
        due = receipts_to_poll(s, now=now, polled_before=polled_before, limit=PAGE)
        credentials = push_credentials(s, organization_ids={r.organization_id for r in due})
    by_organization: dict[str, list[ToPoll]] = defaultdict(list)
    for receipt in due:
        by_organization[receipt.organization_id].append(receipt)
    polled = 0
    for organization_id, receipts in by_organization.items():
        row = credentials.get((organization_id, Provider.aosp))
        answers: dict[str, PushStatus | ProviderError] = {}
        try:
            if row is not None and row.status in _USABLE:  # else held: the watch and the holds say so
                answers = app.gateway.poll(
                    organization_id, credential_from_row(row), [r.provider_push_id for r in receipts]
                )
        except (ProviderError, InvalidCredential, CannotDecrypt, TimeoutError) as e:
            log.warning("push status poll failed for %s: %s", organization_id, type(e).__name__)
        # Every receipt taken is stamped polled, answered or not: one organization's receipts that cannot be
        # polled must not head every page and starve the others.
        with app.session() as s:
            for receipt in receipts:
                answer = answers.get(receipt.provider_push_id)
                if isinstance(answer, PushGone):
                    record_untracked(s, receipt_id=receipt.id, now=now)
                elif isinstance(answer, PushStatus):
                    record_poll(
                        s,
                        receipt_id=receipt.id,
                        now=now,
                        pending_devices=answer.pending_devices,
                        expires_at=answer.expires_at,
                    )
                else:
                    record_poll(s, receipt_id=receipt.id, now=now)
        polled += len(receipts)
    return polled


def fair_tokens_job(actors: Actors, now: datetime) -> int:
    """Send a token for each chunk of either fair lane that could have gone for
    `workers.fair.READY_GRACE_S` and is claimed by none (`FairQueue.ready`), up to `FAIR_TOKENS_PER_RUN` a
    lane; returns how many. A token ends only when it finds the queue empty, so chunks that lost theirs (a
    send that failed after the put, a put re-sent by the relay, a Redis restart that kept chunks and tokens
    unevenly, a token an older release failed) would otherwise wait for the re-push sweep, and the last of
    every rollout with them. An extra token, too, ends only when it finds its lane empty, and takes a turn
    for nothing at each slot until then: so the grace spares chunks whose own tokens are on their way, and
    the tokens still on the lane's queue are counted against the chunks (`_tokens_queued`), since any token
    takes any chunk in turn. A lane whose workers fall behind would otherwise get more tokens every run."""
    sent = 0
    for lane in FairLaneName:
        ready = actors.app.fair_queue(lane).ready(FAIR_TOKENS_PER_RUN)
        missing = max(0, ready - _tokens_queued(actors, lane)) if ready else 0
        actors.send_tokens(lane, missing)
        sent += missing
    return sent


def _tokens_queued(actors: Actors, lane: FairLaneName) -> int:
    """The messages on `lane`'s queue not yet done: ready, delayed, or taken by a live worker process (on
    Redis a delayed message a process fetched ahead of its time is one of those). Those taken include a
    token dispatching its chunk, which takes no other: counted all the same, they hold back a token for a
    lost chunk only until they are done."""
    queue = actors.token_queue(lane)
    backlog = queue_backlog(actors.app.broker, (queue,))
    return sum(backlog.get((queue, state), 0) for state in ("ready", "delayed", "in_flight"))


def _sweep_interval(actors: Actors) -> float:
    return actors.app.settings.sweep_interval_s


def _gauge_interval(actors: Actors) -> float:
    return max(actors.app.settings.sweep_interval_s * 3, 30.0)


def _slow_interval(actors: Actors) -> float:
    return max(actors.app.settings.sweep_interval_s * 6, 60.0)


JOBS: tuple[Job, ...] = (
    Job("requeue_postponed", requeue_postponed_job, _sweep_interval),
    Job("repush", repush_job, _sweep_interval),
    Job("relay", relay_job, _sweep_interval),
    Job("stuck", stuck_job, _slow_interval),
    Job("gauges", gauges_job, _gauge_interval),
    Job("retention", retention_job, _slow_interval),
    Job("poll_receipts", poll_receipts_job, lambda actors: actors.app.settings.poll_interval_s),
    Job("certificates", certificates_job, lambda actors: actors.app.settings.cert_watch_interval_s),
    Job("probe_holds", probe_holds_job, _sweep_interval),
    Job("fair_tokens", fair_tokens_job, _sweep_interval),
)
