"""The actors: thin wrappers that call the services with this process's parts.

Declared on the broker they are given, not on Dramatiq's global one: the composition root (`workers.main`
for `dramatiq`, the demo, the tests) builds the `App` and passes it in.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import dramatiq
from dramatiq.middleware import CurrentMessage

from config.errors import MdmqError
from config.logging import ids_field, log_context
from models.database import DATABASE_ERRORS, Session, is_connection_error
from models.reports import UnknownReport, parse_report
from models.store import NewDeployment, create_deployments
from models.store.rollouts import create_rollout
from models.store.sweeps import Due, due_for
from models.store.unsent import forget_unsent, record_unsent
from models.types import utcnow
from workers.app import App
from workers.broker import BULK_QUEUE, PACED_QUEUE, URGENT_QUEUE
from workers.enqueue import BrokerAway, FairLane, FairLanes, as_due, enqueue_dispatch
from workers.fair import FairLaneName
from workers.services.dispatch import dispatch_chunk, record_later
from workers.services.operations import cancel_deployments, retry_deployments
from workers.services.reports import CheckInReport, DeviceReport, record_check_in
from workers.services.valve import Valve

log = logging.getLogger(__name__)

# Dramatiq runs the lower number first, among the messages a process has fetched: a lock or wipe never
# waits behind a rollout's chunks, nor behind a paced organization's, whose tokens the urgent lane's
# process takes from a queue of their own (`workers.broker.PACED_QUEUE`).
URGENT_PRIORITY = 0
PACED_PRIORITY = 50
BULK_PRIORITY = 100

# dispatch(deployment_ids, failures=0): `failures` is set only by the delayed retry of a turned-away push.
# dispatch_bulk() without ids is a token: it takes the next chunk in turn from the bulk lane's fair queue;
# dispatch_paced(), from the paced lane's (`workers.fair.FairLaneName`).
DispatchActor = dramatiq.Actor[..., None]

# What each actor declares, rather than Dramatiq's defaults (20 retries over up to a week, 10 minutes each).
# `throws`: errors mdmq raises on purpose (a retry meets the same answer), failed without a retry and
# logged as expected. Backoffs in milliseconds: Dramatiq doubles from min_backoff, times 1 to 2 for jitter,
# up to max_backoff. Each statement may wait for a row lock up to the database's lock_timeout (30 s).
#
# A dispatch fails as a message only before its pushes go out (the database away at the claim, a bug):
# Dramatiq's retries cover a database restart, a few minutes; past them the re-push sweep takes the
# deployments again at their redelivery time. Turned-away pushes are not Dramatiq retries: they come
# back as delayed messages the dispatch sends itself. Its time: ten minutes, the limit it ran under
# before it declared one. The send alone may take its own timeout (SEND_TIMEOUT_S, 120 s), and the claim,
# the valve, the holds and the record around it each wait up to 30 s per statement for a lock; a dispatch
# cut short after its pushes went out would push every device again when retried, so the margin is wide.
DISPATCH_OPTIONS: dict[str, Any] = {
    "max_retries": 8,  # 1, 2, 4 … 60 s: two to four minutes
    "min_backoff": 1_000,
    "max_backoff": 60_000,
    "throws": (MdmqError,),
    "time_limit": 600_000,
}
# A record-only message writes answers of pushes already sent, when the database refused them: tried for
# about the redelivery period (REDELIVER_AFTER_S, 10 minutes), past which the re-push sweep sends those
# deployments again anyway. One transaction of a chunk's rows, a few lock waits at worst: two minutes.
RECORD_OPTIONS: dict[str, Any] = {
    "max_retries": 20,  # 1, 2, 4 … 60 s: ten to fifteen minutes
    "min_backoff": 1_000,
    "max_backoff": 60_000,
    "throws": (MdmqError,),
    "time_limit": 120_000,
}
# A device report is not sent again by anyone: a lost one is lost. Retried for about an hour while the
# database is away; bad input is refused inside (logged, not raised). One short transaction: a minute.
REPORT_OPTIONS: dict[str, Any] = {
    "max_retries": 20,  # 1, 2, 4 … 300 s: some forty minutes to an hour
    "min_backoff": 1_000,
    "max_backoff": 300_000,
    "throws": (MdmqError, ValueError),
    "time_limit": 60_000,
}
# An operator's cancel or retry of many deployments: a few minutes of retries, then the operator sees it
# did not happen and asks again. A set-based write of up to some hundred thousand rows: two minutes.
OPERATOR_OPTIONS: dict[str, Any] = {
    "max_retries": 8,
    "min_backoff": 1_000,
    "max_backoff": 60_000,
    "throws": (MdmqError,),
    "time_limit": 120_000,
}


class Created(NamedTuple):
    """What `Actors.create` made: one rollout, and its deployments' ids in the order asked."""

    rollout_id: str
    ids: list[str]


@dataclass(frozen=True)
class Actors:
    dispatch_urgent: DispatchActor
    dispatch_bulk: DispatchActor
    dispatch_paced: DispatchActor
    record_report: dramatiq.Actor[..., None]
    record_dispatch: dramatiq.Actor[[dict[str, Any]], None]
    cancel: dramatiq.Actor[[list[str]], None]
    retry: dramatiq.Actor[[list[str]], None]
    app: App

    def create(
        self,
        organization_id: str,
        deployments: Sequence[NewDeployment],
        *,
        created_by: str | None = None,
        before_commit: Callable[[Session, Created], object] | None = None,
    ) -> Created:
        """Create `deployments` as one rollout (all or nothing: `UnknownDevices`) and enqueue them once
        committed; the rollout's id and the deployments' ids, in order. `before_commit` writes more in the
        same transaction (the answer of an idempotent request). Committed work is never lost to a broker
        away: the rows not sent are left to the relay, logged in one line, and the ids returned all the same.

        They are written as enqueued already, so that sending their messages writes nothing more per row
        (`create_deployments`' `redeliver_after_s`), with one `unsent_create` record beside them, deleted
        once sent: a process that dies in between leaves that record, and the relay takes them."""
        with self.app.session() as session:
            now = utcnow()
            rollout_id = create_rollout(
                session,
                organization_id=organization_id,
                deployments=deployments,
                created_by=created_by,
                now=now,
            )
            ids = create_deployments(
                session,
                organization_id=organization_id,
                deployments=deployments,
                now=now,
                redeliver_after_s=self.app.settings.redeliver_after_s,
                rollout_id=rollout_id,
            )
            unsent = record_unsent(session, organization_id=organization_id, ids=ids, now=now)
            created = Created(rollout_id, ids)
            if before_commit is not None:
                before_commit(session, created)
        self._send_created(organization_id, ids, deployments, unsent)
        return created

    def _send_created(
        self, organization_id: str, ids: list[str], deployments: Sequence[NewDeployment], unsent: int
    ) -> None:
        try:
            self.enqueue_created(organization_id, ids, deployments)
        except BrokerAway as e:
            log.warning(
                "the broker is away (%s): %d new deployments of %s are left to the relay",
                e,
                len(ids),
                organization_id,
            )
        except DATABASE_ERRORS as e:  # the unmark after a failed send: the record stays, the relay reads it
            log.warning("new deployments of %s left to the relay: %s", organization_id, type(e).__name__)
            return
        try:
            with self.app.session() as session:
                forget_unsent(session, record_id=unsent)
        except DATABASE_ERRORS as e:  # the relay will read the record: at worst a second message
            log.warning("unsent record %d of %s kept: %s", unsent, organization_id, type(e).__name__)

    def enqueue_created(
        self, organization_id: str, ids: Sequence[str], deployments: Sequence[NewDeployment]
    ) -> int:
        """`create`'s second step, for a caller that created `deployments` (as `ids`) as enqueued already,
        in a transaction of its own that has committed."""
        created = zip(ids, deployments, strict=True)
        due = as_due([(i, organization_id, d.kind, d.urgent) for i, d in created])
        return self.enqueue(due, marked=True)

    def enqueue(self, deployments: Iterable[Due], *, marked: bool = False) -> int:
        """Send dispatch messages for `deployments` (committed already); returns how many messages.
        `marked`: created as enqueued already (`create`)."""
        return enqueue_dispatch(
            self.app.session,
            deployments,
            urgent=self.dispatch_urgent.send,
            bulk=self.dispatch_bulk.send,
            chunk_size=self.app.settings.dispatch_chunk_size,
            redeliver_after_s=self.app.settings.redeliver_after_s,
            marked=marked,
            fair=FairLanes(
                bulk=FairLane(self.app.fair, self._bulk_token),
                paced=FairLane(self.app.paced, self._paced_token),
                paced_max_rate=self.app.settings.paced_lane_max_rate,
            ),
        )

    def _bulk_token(self, delay_s: float) -> None:
        self.send_token(FairLaneName.bulk, delay_s)

    def _paced_token(self, delay_s: float) -> None:
        self.send_token(FairLaneName.paced, delay_s)

    def send_token(self, lane: FairLaneName, delay_s: float = 0.0) -> None:
        """One token of `lane`, delayed by `delay_s` when its chunk is booked for later (a paced
        organization's), else on the queue at once: a delayed message takes a detour through the broker."""
        delay_ms = int(delay_s * 1000)
        self._token_actor(lane).send_with_options(args=(), delay=delay_ms if delay_ms > 0 else None)

    def token_queue(self, lane: FairLaneName) -> str:
        """The queue `lane`'s tokens go on."""
        return self._token_actor(lane).queue_name

    def _token_actor(self, lane: FairLaneName) -> DispatchActor:
        return self.dispatch_paced if lane is FairLaneName.paced else self.dispatch_bulk

    def send_tokens(self, lane: FairLaneName, count: int) -> None:
        """`count` tokens of `lane` on the queue at once, each to take the next chunk in turn (a token that
        finds its fair queue empty ends there)."""
        for _ in range(count):
            self.send_token(lane)

    def enqueue_ids(self, deployment_ids: Sequence[str]) -> int:
        """`enqueue` for deployments known by id only (released, retried), committed already. With the
        broker away, those not sent are the relay's (they are not marked enqueued): logged in one line, and
        0 messages returned, so that committed work never fails its caller."""
        if not deployment_ids:
            return 0
        with self.app.session() as session:
            due = due_for(session, ids=deployment_ids)
        try:
            return self.enqueue(due)
        except BrokerAway as e:
            log.warning("the broker is away (%s): %d deployments are left to the relay", e, len(due))
            return 0


def declare_actors(app: App) -> Actors:
    def record_dispatch(record: dict[str, Any]) -> None:
        """Write the answers of pushes a dispatch sent but could not record (the database refused them):
        sends nothing. Delivered twice, it writes nothing twice. While the database is still away, it is
        retried (RECORD_OPTIONS) with one line logged, not the record and a traceback each time."""
        try:
            record_later(app.session, record)
        except DATABASE_ERRORS as e:
            if not is_connection_error(e):
                raise
            log.warning("the database is still away (%s): the answers are recorded later", type(e).__name__)
            raise dramatiq.Retry(type(e).__name__) from e

    # On the urgent queue: the rows of a chunk wait for it, and it takes one short transaction.
    recorder: dramatiq.Actor[[dict[str, Any]], None] = dramatiq.Actor(
        record_dispatch, actor_name="record_dispatch", queue_name=URGENT_QUEUE, priority=URGENT_PRIORITY,
        options=RECORD_OPTIONS, broker=app.broker,
    )  # fmt: skip
    urgent = _dispatch_actor(app, "dispatch_urgent", URGENT_QUEUE, URGENT_PRIORITY, recorder)
    bulk = _dispatch_actor(app, "dispatch_bulk", BULK_QUEUE, BULK_PRIORITY, recorder)
    # A paced organization's tokens: on a queue the urgent lane's process takes beside the urgent one,
    # below its work, so that the process (not niced, idle most of the time) sends each chunk when it is
    # taken, on its slot. The bulk processes let one wait 0.1-0.5 s behind their rollouts, and the late ones
    # went out with the next.
    paced = _dispatch_actor(
        app, "dispatch_paced", PACED_QUEUE, PACED_PRIORITY, recorder, lane=FairLaneName.paced
    )

    def record_report(
        deployment_id: str,
        report: str,
        reason: str | None = None,
        error_chain: Sequence[Mapping[str, Any]] | None = None,
        reported_at: str | None = None,
        *,
        device_id: str | None = None,
        organization_id: str | None = None,
    ) -> None:
        """`reported_at`: when the check-in server received the report (ISO 8601 with an offset). Messages
        can overtake each other between worker threads; a report older than one applied changes nothing.
        `device_id` and `organization_id`: the device that sends it and its organization; the report is
        bound to them as the API binds its reports (`record_check_in`), and a message without them is
        refused."""
        try:
            if device_id is None or organization_id is None:
                raise ValueError("the message does not name its device_id and organization_id")
            parsed = DeviceReport(
                deployment_id, parse_report(report), reason, error_chain, _reported_at(reported_at)
            )
            item = CheckInReport(device_id, parsed)
        except (UnknownReport, ValueError) as e:  # bad input is logged, not retried: it would be as bad again
            log.warning("device report refused: %s", e, extra={"deployment_id": deployment_id})
            return
        with log_context(action="report", deployment_id=deployment_id), app.session() as session:
            record_check_in(
                session,
                organization_id=organization_id,
                reports=[item],
                policy=app.policy,
                max_lead_s=app.settings.report_max_lead_s,
            )

    reports = dramatiq.Actor(
        record_report, actor_name="record_report", queue_name=URGENT_QUEUE, priority=URGENT_PRIORITY,
        options=REPORT_OPTIONS, broker=app.broker,
    )  # fmt: skip

    def cancel(deployment_ids: list[str]) -> None:
        """An operator's cancel of many deployments, off the request path. Those already started are
        refused (logged and counted), as one at a time would be."""
        with log_context(action="cancel", **ids_field(deployment_ids)), app.session() as session:
            cancel_deployments(session, ids=deployment_ids)

    def retry(deployment_ids: list[str]) -> None:
        """An operator's retry of Failed and Error distributing deployments: back to Queued, then enqueued."""
        with log_context(action="retry", **ids_field(deployment_ids)):
            with app.session() as session:
                applied = [a.deployment_id for a in retry_deployments(session, ids=deployment_ids).applied]
            actors.enqueue_ids(applied)

    cancels: dramatiq.Actor[[list[str]], None] = dramatiq.Actor(
        cancel, actor_name="cancel", queue_name=URGENT_QUEUE, priority=URGENT_PRIORITY,
        options=OPERATOR_OPTIONS, broker=app.broker,
    )  # fmt: skip
    retries: dramatiq.Actor[[list[str]], None] = dramatiq.Actor(
        retry, actor_name="retry", queue_name=URGENT_QUEUE, priority=URGENT_PRIORITY,
        options=OPERATOR_OPTIONS, broker=app.broker,
    )  # fmt: skip
    actors = Actors(urgent, bulk, paced, reports, recorder, cancels, retries, app)
    return actors


def _reported_at(raw: str | None) -> datetime | None:
    """A message's `reported_at`; ValueError when it is not a time, or has no UTC offset (ambiguous)."""
    at = datetime.fromisoformat(raw) if raw is not None else None
    if at is not None and at.tzinfo is None:
        raise ValueError(f"reported_at {raw!r} has no UTC offset")
    return at


def _dispatch_actor(
    app: App,
    name: str,
    queue: str,
    priority: int,
    recorder: dramatiq.Actor[[dict[str, Any]], None],
    *,
    lane: FairLaneName = FairLaneName.bulk,
) -> DispatchActor:
    settings = app.settings
    valve = Valve(settings.valve_window, settings.valve_min_answers, settings.valve_dead_share)

    def dispatch(deployment_ids: list[str] | None = None, failures: int = 0) -> None:
        if deployment_ids is None:
            take_turn()
        else:
            dispatch_ids(deployment_ids, failures)

    def dispatch_ids(deployment_ids: list[str], failures: int) -> None:
        with log_context(action="dispatch", **ids_field(deployment_ids)):
            summary = dispatch_chunk(
                app.session,
                app.gateway,
                deployment_ids,
                policy=app.policy,
                failures=failures,
                redeliver_after_s=app.settings.redeliver_after_s,
                valve=valve,
                first_probe_s=app.settings.hold_probe_first_s,
            )
        if summary.unrecorded is not None:
            recorder.send(summary.unrecorded.as_message())
        if summary.retry is not None:
            # Transient provider failures come back later as a delayed message on the same queue.
            retry = summary.retry
            delay_ms = int(retry.delay_s * 1000)
            actor.send_with_options(args=(retry.deployment_ids, retry.failures), delay=delay_ms)

    def take_turn() -> None:
        """A token: dispatch the chunk its lane's fair queue gives this message (the same one if the message
        is delivered again), then forget the claim. With none that may go yet, the token comes back when one
        may; with none at all, it ends (another token took its chunk)."""
        message = CurrentMessage.get_current_message()
        assert message is not None, "the broker runs CurrentMessage (workers.broker.build_broker)"
        fair = app.fair_queue(lane)
        taken = fair.take(message.message_id)
        if taken.deployment_ids is None:
            if taken.wait_s is not None:
                actor.send_with_options(args=(), delay=max(1, math.ceil(taken.wait_s * 1000)))
            return
        dispatch_ids(taken.deployment_ids, 0)
        fair.done(message.message_id)

    actor: DispatchActor = dramatiq.Actor(
        dispatch,
        actor_name=name,
        queue_name=queue,
        priority=priority,
        options=DISPATCH_OPTIONS,
        broker=app.broker,
    )
    return actor
