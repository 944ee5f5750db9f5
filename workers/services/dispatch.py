"""Dispatch of one chunk, as a pipeline of values: load → pace → send → judge → hold → plan → record.

- **load** claims the chunk and reads its devices, credentials, holds and policies, in one transaction;
  each device is woken once for all of its deployments in the chunk (`Loaded`).
- **pace** passes everything on: an organization's wake-up rate is kept before a chunk gets here, by the
  size and the turn of its chunks in the fair queue (`workers.fair`).
- **send** pushes every group's batch at once, with no transaction open, and touches no database: it
  returns each group's answers, or the hold its credential calls for (`Answered`).
- **judge** weighs dead-token answers on the credential's window (the safety valve), and **hold** holds
  the organization's deployments for a provider whose credential or configuration was refused.
- **plan** turns the answers into what is written (`DispatchRecord`) and what goes again later (`Retry`),
  and **record** writes it with one store call.

When recording fails with the pushes out, the summary carries the record (`unrecorded`) for the caller to
hand to a record-only message: the answers are written later and nobody is pushed again. Transient
provider failures come back as a `Retry` for the caller to send as a delayed message. Nothing here waits.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from config.logging import ids_field, log_context
from config.settings import REDELIVER_AFTER_S
from models.database import DATABASE_ERRORS, Session, is_connection_error
from models.enums import PROVIDER_NAMES, Actor, CredentialStatus, Provider
from models.push_tokens import token_digest
from models.secrets import CANNOT_DECRYPT, CannotDecrypt, Undecryptable
from models.store import ErrorInfo
from models.store.attempts import FailedPush, record_failed_pushes
from models.store.dispatch import (
    Claimed,
    DispatchRecord,
    Invalidation,
    NewReceipt,
    PushTarget,
    Recorded,
    TokenUsed,
    Undeliverable,
    claim_for_push,
    credential_unchanged,
    give_back_attempts,
    hold_for_credential,
    hold_for_topic,
    mark_credential,
    push_credentials,
    push_targets,
    record_dispatch,
)
from models.store.enrollment import cancel_for_unenrolled
from models.store.holds import (
    ANSWER_DEAD,
    NewHold,
    answer_window,
    answers_to_come,
    devices_served,
    first_dead_answers,
    hold_provider,
    provider_holds,
    record_answers,
    still_held,
)
from models.store.organizations import retry_overrides
from models.tables import ProviderHold, PushCredential
from models.types import utcnow
from workers.metrics import HOLDS, TOKENS_INVALIDATED, count_answers, reason_label
from workers.policy import KindPolicy, Policies, RetryPolicy, backoff_s
from workers.providers.base import CredentialRejected, Outcome, ProviderError, Push, PushResult, PushType
from workers.providers.credentials import Credential, InvalidCredential
from workers.push_gateway import PushGateway
from workers.queue_wait import observe_queue_wait
from workers.services import wording
from workers.services.credential_rows import credential_from_row
from workers.services.valve import Valve, Verdict, answer_marks

log = logging.getLogger(__name__)

SessionFactory = Callable[[], AbstractContextManager[Session]]
# The first try of one push for a held organization comes this long after the hold (DESIGN §4.3).
HOLD_FIRST_PROBE_S = 60.0
DEFAULT_VALVE = Valve()


# -- the values between the stages -----------------------------------------------------------------------


@dataclass(frozen=True)
class Retry:
    """Deployments the provider turned away, to be sent again after `delay_s`: the `failures`-th time in a
    row for this message's deployments, which sets the back-off."""

    deployment_ids: list[str]
    delay_s: float
    failures: int


@dataclass(frozen=True)
class Wake:
    """One device to wake, and the deployments of the chunk it serves."""

    target: PushTarget
    deployments: tuple[Claimed, ...]


@dataclass(frozen=True)
class Group:
    """The wakes of one organization and provider: one credential, one batch."""

    organization_id: str
    provider: Provider
    credential: PushCredential | None
    wakes: tuple[Wake, ...]
    standing: ProviderHold | None = None  # the hold this organization and provider are under already

    @property
    def live(self) -> tuple[Wake, ...]:
        return tuple(w for w in self.wakes if w.target.token_valid)

    @property
    def fingerprint(self) -> str | None:
        return self.credential.fingerprint if self.credential is not None else None

    def logged(self) -> AbstractContextManager[None]:
        """Lines logged about this group name its organization, provider and deployments."""
        ids = [d.id for w in self.wakes for d in w.deployments]
        return log_context(organization=self.organization_id, provider=self.provider.value, **ids_field(ids))


@dataclass(frozen=True)
class Loaded:
    """A claimed chunk: its groups, and the policies of their organizations. `now`: the claim's time."""

    now: datetime
    claimed: tuple[Claimed, ...]
    groups: tuple[Group, ...]
    policies: Policies


@dataclass(frozen=True)
class Hold:
    """Why a group's organization is held for its provider. `scope`: `credential` marks the credential
    invalid, `config` leaves it valid. `answer`: the provider's answer that held it, if any."""

    reason: str
    scope: Outcome = Outcome.credential
    answer: PushResult | None = None


@dataclass(frozen=True)
class Answered:
    """A group and what became of it: one result per live wake, or a hold (and no result). `held`: the
    deployments the hold stage held."""

    group: Group
    results: tuple[PushResult, ...] = ()
    hold: Hold | None = None
    held: int = 0
    pushed: bool = True  # the batch went to the provider (a hold decided before sending sent nothing)

    @property
    def sent(self) -> bool:
        return self.hold is None and bool(self.results)

    @property
    def answers(self) -> list[tuple[Wake, PushResult]]:
        return list(zip(self.group.live, self.results, strict=True)) if self.hold is None else []

    @property
    def all_accepted(self) -> bool:
        return (
            self.hold is None
            and len(self.results) == len(self.group.wakes)
            and all(r.outcome is Outcome.accepted for r in self.results)
        )

    def outcomes(self) -> str:
        """`12 accepted, 1 permanent, 2 invalid token`: what became of the group's pushes, for its log."""
        if self.hold is not None:
            return f"none sent, held: {self.hold.reason}"
        counts = Counter(r.outcome.value for r in self.results)
        parts = [f"{n} {outcome}" for outcome, n in sorted(counts.items())]
        if dead := len(self.group.wakes) - len(self.group.live):
            parts.append(f"{dead} invalid token")
        return ", ".join(parts) or "none"

    def again(self, reason: str) -> Answered:
        """Every live wake goes again later, as if the provider had turned it away; no hold."""
        results = tuple(
            PushResult(w.target.device_id, Outcome.transient, reason=reason) for w in self.group.live
        )
        return replace(self, results=results, hold=None)

    def undecided(self) -> Answered:
        """Dead-token answers nobody could judge: sent again with a later batch, as transient failures."""
        results = tuple(
            replace(r, outcome=Outcome.transient) if r.outcome is Outcome.dead_token else r
            for r in self.results
        )
        return replace(self, results=results)


@dataclass(frozen=True)
class Planned:
    """What a chunk's answers come to: the record to write, the retry to send, and the pushes counted."""

    record: DispatchRecord
    retry: Retry | None
    pushes: int
    accepted: int


@dataclass(frozen=True)
class DispatchSummary:
    claimed: int = 0
    pushes: int = 0
    accepted: int = 0
    undeliverable: int = 0
    held: int = 0
    retry: Retry | None = None
    # The answers could not be recorded (the database was away): to be written by a record-only message.
    unrecorded: DispatchRecord | None = None


# -- the pipeline -----------------------------------------------------------------------------------------


def dispatch_chunk(
    session: SessionFactory,
    gateway: PushGateway,
    deployment_ids: list[str],
    *,
    policy: RetryPolicy,
    failures: int = 0,
    now: datetime | None = None,
    redeliver_after_s: float = REDELIVER_AFTER_S,
    valve: Valve = DEFAULT_VALVE,
    first_probe_s: float = HOLD_FIRST_PROBE_S,
) -> DispatchSummary:
    """Push for the Queued deployments of `deployment_ids`. `failures`: how many times in a row the provider
    already turned this message's pushes away (a delayed retry carries it), for the back-off."""
    loaded = pace(load(session, deployment_ids, policy=policy, now=now or utcnow()))
    answered = send(gateway, loaded)
    answered = [judge(session, a, valve) if a.sent else a for a in answered]
    probe_at = loaded.now + timedelta(seconds=first_probe_s)
    answered = [
        hold(session, a, probe_at=probe_at, claimed_at=loaded.now) if a.hold is not None else a
        for a in answered
    ]
    planned = plan(loaded, answered, failures=failures + 1, redeliver_after_s=redeliver_after_s)
    summary = DispatchSummary(
        claimed=len(loaded.claimed),
        pushes=planned.pushes,
        accepted=planned.accepted,
        held=sum(a.held for a in answered),
        retry=planned.retry,
    )
    try:
        recorded = record(session, planned.record)
    except DATABASE_ERRORS as e:
        if not is_connection_error(e):
            raise
        # The pushes are out: a message that failed here would be taken again and push every device of it a
        # second time. The answers go to a record-only message instead.
        log.warning(
            "could not record the answers of %d pushes (%s): handed to a record-only message",
            planned.pushes,
            type(getattr(e, "orig", None) or e).__name__,
        )
        return replace(summary, unrecorded=planned.record)
    return replace(summary, undeliverable=recorded.undeliverable)


def load(
    session: SessionFactory, deployment_ids: Sequence[str], *, policy: RetryPolicy, now: datetime
) -> Loaded:
    """Claim the Queued deployments of `deployment_ids` and read what sending for them takes."""
    with session() as s:
        claimed = claim_for_push(s, ids=deployment_ids, now=now)
        targets = push_targets(s, device_ids={c.device_id for c in claimed})
        claimed = _cancel_unenrolled(s, claimed, targets)
        organizations = {c.organization_id for c in claimed}
        credentials = push_credentials(s, organization_ids=organizations)
        claimed = _hold_other_topics(s, claimed, targets, credentials, now=now)
        holds = provider_holds(s, organization_ids=organizations) if claimed else {}
        policies = Policies(policy, retry_overrides(s, organization_ids=organizations))
    observe_queue_wait(session, claimed, now=now)
    groups = tuple(
        Group(
            organization,
            provider,
            credentials.get((organization, provider)),
            wakes,
            holds.get((organization, provider)),
        )
        for (organization, provider), wakes in _by_group(claimed, targets).items()
    )
    return Loaded(now, tuple(claimed), groups, policies)


def _cancel_unenrolled(s: Session, claimed: list[Claimed], targets: dict[str, PushTarget]) -> list[Claimed]:
    """Nothing is pushed to an unenrolled device: deployments claimed for one (created or released as it
    was unenrolled) end Cancelled, "device unenrolled", as its unenrollment cancelled the others."""
    gone = {c.id for c in claimed if (t := targets.get(c.device_id)) is not None and not t.enrolled}
    if not gone:
        return claimed
    cancel_for_unenrolled(s, ids=sorted(gone), actor=Actor.worker)
    log.info("cancelled %d deployments of unenrolled devices", len(gone), extra=ids_field(sorted(gone)))
    return [c for c in claimed if c.id not in gone]


def _hold_other_topics(
    s: Session,
    claimed: list[Claimed],
    targets: dict[str, PushTarget],
    credentials: Mapping[tuple[str, Provider], PushCredential],
    *,
    now: datetime,
) -> list[Claimed]:
    """Hold, before any push, the deployments of Apple devices enrolled under a topic other than their
    organization's certificate's. APNs takes an MDM push only under the topic of the device's enrollment
    (Apple, "Sending MDM commands to a device"; NanoMDM routes each push by the enrollment's topic for
    this reason); under another, every token answers `DeviceTokenNotForTopic` ("Handling notification
    responses from APNs"), an answer that would invalidate a live token or hold the whole organization.
    A certificate of the device's topic, uploaded, releases them."""
    other: dict[str, list[str]] = defaultdict(list)  # hold reason → deployments
    for c in claimed:
        target = targets.get(c.device_id)
        credential = credentials.get((c.organization_id, Provider.apns))
        if target is None or target.provider is not Provider.apns or credential is None:
            continue
        if target.topic is not None and credential.topic is not None and target.topic != credential.topic:
            other[wording.other_topic(target.topic, credential.topic)].append(c.id)
    if not other:
        return claimed
    for reason, ids in other.items():
        held = hold_for_topic(s, ids=ids, reason=reason)
        HOLDS.labels(Provider.apns.value).inc(held)
        log.error("deployments held: %s", reason, extra={"held": held} | ids_field(ids))
    held_ids = {i for ids in other.values() for i in ids}
    give_back_attempts(s, ids=sorted(held_ids), redeliver_at=now)  # no device was woken
    return [c for c in claimed if c.id not in held_ids]


def pace(loaded: Loaded) -> Loaded:
    """Every wake of the chunk goes now: an organization's wake-up rate (DESIGN §4.7) is kept by the fair
    queue (`workers.fair`), which cuts its chunks to a tenth of the rate and hands them out no faster."""
    return loaded


def send(gateway: PushGateway, loaded: Loaded) -> list[Answered]:
    """Send every group's pushes at once, so a chunk for APNs, FCM and AOSP devices waits for its slowest
    provider rather than for each in turn. Touches no database: a write lock held across network I/O
    would stall every other writer (on SQLite, all of them)."""
    answered: dict[int, Answered] = {}
    sending: list[tuple[int, Group, Credential]] = []
    for i, group in enumerate(loaded.groups):
        with group.logged():
            usable = _usable(group)
        if isinstance(usable, Credential):
            sending.append((i, group, usable))
        else:
            answered[i] = Answered(group, hold=usable, pushed=False)
    if sending:
        batches = [
            (g.organization_id, credential, [wake_up(w.target) for w in g.live])
            for _, g, credential in sending
        ]
        try:
            answers = gateway.send_all(batches)
        except TimeoutError as e:
            answers = [e] * len(sending)
        for (i, group, _), answer in zip(sending, answers, strict=True):
            with group.logged():
                answered[i] = _answered(group, answer)
    return [answered[i] for i in range(len(loaded.groups))]


def judge(session: SessionFactory, answered: Answered, valve: Valve) -> Answered:
    """Add the group's answers to its credential's window and judge its dead-token answers on it: the
    devices' (kept, for their tokens to be invalidated), the organization's (a hold; no token is touched), or
    too few answers to tell while another device may still answer (sent again with the next batch).

    A device's dead-token answer counts once per credential (`first_dead_answers`): a retry sends again what
    an earlier try could not settle, and a chunk taken again after its worker died before recording it
    pushes the same devices a second time; counted each time, one device pushed twenty times would weigh as
    twenty devices and hold its organization. With the database away for a moment the pushes are out
    already: the dead-token answers go again later, undecided, rather than failing the message (which would
    push every device of the chunk a second time)."""
    group = answered.group
    fingerprint = group.fingerprint
    assert fingerprint is not None
    results = list(answered.results)
    marks = answer_marks(results)
    if not valve.needs_writing(fingerprint, marks):
        return answered
    dead = [r for r in results if r.outcome is Outcome.dead_token]
    with group.logged():
        try:
            with session() as s:
                counted = first_dead_answers(
                    s, fingerprint=fingerprint, device_ids=[r.device_id for r in dead], now=utcnow()
                )
                written = answer_marks(results, counted=counted)
                window = (
                    record_answers(s, fingerprint=fingerprint, answers=written, keep=valve.window)
                    if written
                    else answer_window(s, fingerprint=fingerprint)
                )
                valve.settled.read(fingerprint, window, full=valve.window)
                if not dead:
                    return answered
                sample = window if len(marks) <= valve.window else marks
                organization, provider = group.organization_id, group.provider
                verdict = valve.judge(
                    sample,
                    devices_served=lambda n: devices_served(
                        s, organization_id=organization, provider=provider, at_most=n
                    ),
                    answers_to_come=lambda: answers_to_come(
                        s, organization_id=organization, provider=provider, fingerprint=fingerprint
                    ),
                )
        except DATABASE_ERRORS as e:
            if not is_connection_error(e):
                raise
            log.warning("could not judge dead-token answers (%s): sent again later", type(e).__name__)
            return answered.undecided()
        first = dead[0]
        log.warning(
            "%d of %d answers in the credential's window are dead-token answers (%s): %s",
            sample.count(ANSWER_DEAD),
            len(sample),
            first.reason,
            verdict.value,
        )
    if verdict is Verdict.organization:
        name = PROVIDER_NAMES[group.provider]
        reason = first.advice or f"{name} answered {first.reason} for most devices"
        return replace(answered, hold=Hold(reason, Outcome.config, first))
    if verdict is Verdict.undecided:
        return answered.undecided()
    return answered


def hold(
    session: SessionFactory, answered: Answered, *, probe_at: datetime, claimed_at: datetime
) -> Answered:
    """Hold every Queued deployment of the organization for this provider, in a transaction of its own: the
    credential row, then the holds. If an operator stored another credential since this batch read it, or
    the hold it read was released meanwhile, hold nothing: the batch's pushes go again, as a transient
    failure, with the new credential or unheld. The refused push is recorded for the chunk's deployments
    (at `claimed_at`), with the scheduler's probe as their next try."""
    group, reason = answered.group, answered.hold
    assert reason is not None
    with group.logged(), session() as s:
        replaced = not credential_unchanged(
            s, organization_id=group.organization_id, provider=group.provider, fingerprint=group.fingerprint
        )
        released = group.standing is not None and not still_held(
            s, hold=group.standing, organization_id=group.organization_id, provider=group.provider
        )
        if replaced or released:
            return answered.again("credential replaced" if replaced else "hold released")
        held = _hold(s, group, reason, probe_at=probe_at)
        # No device was woken: the claim's count is given back, as for a provider's 5xx, so a rollout whose
        # key was revoked and renewed keeps every wake-up its policy allows. (The next attempt time of a
        # held deployment is the release's to set.)
        ids = [d.id for w in group.live for d in w.deployments]
        give_back_attempts(s, ids=ids, redeliver_at=utcnow())
        if answered.pushed and group.standing is None:
            record_failed_pushes(s, at=claimed_at, failed=[_refused(group, reason, ids, probe_at)])
    return replace(answered, held=held)


def plan(loaded: Loaded, answered: Sequence[Answered], *, failures: int, redeliver_after_s: float) -> Planned:
    """What the answers settle, as values: tokens invalidated, deployments undeliverable, receipts, and
    pushes the provider turned away (`failures` in a row now), to go again with back-off."""
    invalidations: list[Invalidation] = []
    tokens: list[TokenUsed] = []
    undeliverable: list[Undeliverable] = []
    receipts: list[NewReceipt] = []
    repush_at: dict[str, datetime] = {}
    turned_away: list[tuple[Wake, PushResult]] = []
    failed: list[FailedPush] = []
    pushes = accepted = 0
    now = loaded.now
    for a in answered:
        group = a.group
        with group.logged():
            dead_targets = [(w, None) for w in group.wakes if not w.target.token_valid]
            undeliverable += _undeliverable(
                group.provider, dead_targets, "invalid_token", "has an invalid token for the device"
            )
            by_outcome: dict[Outcome, list[tuple[Wake, PushResult]]] = defaultdict(list)
            for wake, result in a.answers:
                by_outcome[result.outcome].append((wake, result))
            pushes += len(a.answers)
            accepted += len(by_outcome[Outcome.accepted])
            # Judged the devices' by the valve by now: an undecided one went back to transient, and a verdict
            # against the organization held the group before it got here.
            dead = by_outcome[Outcome.permanent] + by_outcome[Outcome.dead_token]
            invalidations += [_token_invalid(w, r, group.fingerprint, now) for w, r in dead]
            tokens += [_token_used(w) for w, _ in dead_targets] + [_token_used(w) for w, _ in dead]
            for label, count in Counter(reason_label(r) for _, r in dead).items():
                TOKENS_INVALIDATED.labels(group.organization_id, group.provider.value, label).inc(count)
            undeliverable += _undeliverable(
                group.provider, dead, "push_token_rejected", "rejected the device token"
            )
            rejected = by_outcome[Outcome.payload_rejected]
            undeliverable += _undeliverable(
                group.provider, rejected, "push_payload_rejected", "rejected the push"
            )
            failed += _failed(dead + rejected)
            woken = by_outcome[Outcome.accepted]
            receipts += _receipts(group.organization_id, group.provider, woken, now)
            repush_at |= _repush_at([w for w, _ in woken], loaded.policies, now)
            turned_away += by_outcome[Outcome.transient]
            log.info("pushes answered: %s", a.outcomes())
    give_ups, retry = _retry(turned_away, policies=loaded.policies, failures=failures, now=now)
    failed += _turned_away(turned_away, retry, now)
    record = DispatchRecord(
        claimed_at=now,
        claimed_ids=tuple(c.id for c in loaded.claimed),
        lock=not all(a.all_accepted for a in answered),
        invalidations=tuple(invalidations),
        undeliverable=tuple(undeliverable + give_ups),
        receipts=tuple(receipts),
        repush_at=repush_at,
        give_back=tuple(retry.deployment_ids) if retry is not None else (),
        # Should the delayed message be lost, the re-push sweep sends them once it is overdue.
        redeliver_at=now + timedelta(seconds=retry.delay_s + redeliver_after_s)
        if retry is not None
        else None,
        failed=tuple(failed),
        tokens=tuple(tokens),
    )
    return Planned(record, retry, pushes, accepted)


def record(session: SessionFactory, planned: DispatchRecord, *, again: bool = False) -> Recorded:
    """Write a chunk's record in one transaction. `again`: it may have been written already (a record-only
    message delivered twice): nothing is written twice.

    When every push was accepted (the common case) the deployments are written by one statement, the
    receipts' links, which takes its row locks in id order; otherwise the rows are locked first, in id
    order, for the several statements that follow."""
    with session() as s:
        return record_dispatch(s, record=planned, again=again)


def record_later(session: SessionFactory, message: Mapping[str, Any]) -> Recorded:
    """A record-only message's work: write the answers of pushes sent earlier, sending nothing."""
    planned = DispatchRecord.from_message(message)
    with log_context(action="record", **ids_field(list(planned.claimed_ids))):
        recorded = record(session, planned, again=True)
        if recorded.already:
            log.info("the answers of %d pushes were recorded already", planned.pushes_answered)
        else:
            log.info("recorded the answers of %d pushes sent earlier", planned.pushes_answered)
    return recorded


# -- the stages' parts ------------------------------------------------------------------------------------


def _by_group(
    claimed: list[Claimed], targets: dict[str, PushTarget]
) -> dict[tuple[str, Provider], tuple[Wake, ...]]:
    by_device: dict[str, list[Claimed]] = defaultdict(list)
    for deployment in claimed:
        if deployment.device_id in targets:  # else the device row went away; nothing to wake
            by_device[deployment.device_id].append(deployment)
    groups: dict[tuple[str, Provider], list[Wake]] = defaultdict(list)
    for device_id, deployments in by_device.items():
        wake = Wake(targets[device_id], tuple(deployments))
        groups[(deployments[0].organization_id, wake.target.provider)].append(wake)
    return {key: tuple(wakes) for key, wakes in groups.items()}


def _usable(group: Group) -> Credential | Hold | None:
    """The credential to send the group's pushes with; else a hold (a standing one, or because the stored
    credential cannot be used), or None when there is nothing to send."""
    if not group.live:
        return None
    if group.standing is not None:
        return Hold(group.standing.reason, Outcome(group.standing.scope))
    name = PROVIDER_NAMES[group.provider]
    credential = group.credential
    if credential is None:
        return Hold(f"no {name} credential")
    if credential.status in (CredentialStatus.expired, CredentialStatus.revoked, CredentialStatus.invalid):
        return Hold(f"{name} credential {credential.status.value}")
    return _loaded(group, credential)


def _loaded(group: Group, credential: PushCredential) -> Credential | Hold:
    """The provider credential of the stored row; a hold when it, or a device's push magic, is unusable."""
    name = PROVIDER_NAMES[group.provider]
    if any(isinstance(w.target.push_magic, Undecryptable) for w in group.live):
        return Hold(CANNOT_DECRYPT, Outcome.config)  # the key is wrong, not the devices: no token touched
    try:
        return credential_from_row(credential)
    except InvalidCredential as e:
        return Hold(f"{name} credential refused: {e}")
    except CannotDecrypt:
        return Hold(CANNOT_DECRYPT, Outcome.config)  # the key is wrong, not the credential: stays valid


def _answered(group: Group, answer: list[PushResult] | Exception) -> Answered:
    """The group's results from the provider's answer, or the hold it calls for when the credential or the
    configuration was refused. An exception no provider raises is a bug, and fails the message."""
    name = PROVIDER_NAMES[group.provider]
    if isinstance(answer, InvalidCredential | CredentialRejected):
        return Answered(group, hold=Hold(f"{name} credential refused: {answer}"))
    if isinstance(answer, ProviderError | TimeoutError):
        log.warning("push batch failed: %s", answer)
        answer = [
            PushResult(w.target.device_id, Outcome.transient, reason=type(answer).__name__)
            for w in group.live
        ]
    elif isinstance(answer, Exception):
        raise answer
    count_answers(group.provider.value, answer)
    answered = Answered(group, results=tuple(answer))
    if refused := next((r for r in answer if r.outcome is Outcome.credential), None):
        reason = refused.advice or f"{name} refused the credential: {refused.reason}"
        return replace(answered, hold=Hold(reason, Outcome.credential, refused))
    if misconfigured := next((r for r in answer if r.outcome is Outcome.config), None):
        reason = misconfigured.advice or f"{name} refused the configuration: {misconfigured.reason}"
        return replace(answered, hold=Hold(reason, Outcome.config, misconfigured))
    return answered


def wake_up(target: PushTarget) -> Push:
    """The push that wakes a device: an MDM wake-up with its PushMagic for Apple devices, a check-in data
    message for the others. Dispatches, the hold probe and the credential check send the same one."""
    if target.provider is Provider.apns:
        return Push(target.device_id, token=target.token, push_magic=target.push_magic)
    return Push(target.device_id, token=target.token, push_type=PushType.data, payload={"action": "checkin"})


def _hold(s: Session, group: Group, hold: Hold, *, probe_at: datetime) -> int:
    """Hold the organization's Queued deployments for the group's provider; returns how many. A refused
    credential is marked invalid; a configuration answer leaves it valid. With a credential to try, the hold
    is recorded for the scheduler's probe, which releases it when one push goes through."""
    organization_id, provider, credential = group.organization_id, group.provider, group.credential
    held = hold_for_credential(s, organization_id=organization_id, provider=provider, reason=hold.reason)
    HOLDS.labels(provider.value).inc(held)
    if credential is not None and hold.scope is Outcome.credential:
        mark_credential(
            s,
            credential_id=credential.id,
            fingerprint=credential.fingerprint,
            status=CredentialStatus.invalid,
            reason=hold.reason,
            only_from=(CredentialStatus.valid, CredentialStatus.expiring),
        )
    if credential is not None and group.standing is None:
        answer = hold.answer
        new = NewHold(
            organization_id,
            provider,
            hold.scope.value,
            hold.reason,
            answer.reason[:64] if answer is not None and answer.reason else None,
            credential.fingerprint,
        )
        hold_provider(s, hold=new, probe_at=probe_at, now=utcnow())
    extra = {"organization": organization_id, "provider": provider.value, "held": held}
    log.error("deployments held: %s", hold.reason, extra=extra)
    return held


def _repush_at(wakes: list[Wake], policies: Policies, now: datetime) -> dict[str, datetime]:
    """When to wake each device again if it has not checked in: the push back-off of its attempt."""
    return {
        d.id: now
        + timedelta(seconds=_push_backoff_s(policies.limits(d.organization_id, d.kind), d.attempt_count))
        for w in wakes
        for d in w.deployments
    }


def _push_backoff_s(limits: KindPolicy, attempt: int) -> float:
    return backoff_s(attempt, limits.push_first_s, limits.push_max_s)


def _receipts(
    organization_id: str, provider: Provider, woken: list[tuple[Wake, PushResult]], now: datetime
) -> Iterator[NewReceipt]:
    by_push: dict[str | None, list[tuple[Wake, PushResult]]] = defaultdict(list)
    for wake, result in woken:
        by_push[result.push_id].append((wake, result))
    for push_id, shared in by_push.items():
        first = shared[0][1]
        ids = tuple(d.id for w, _ in shared for d in w.deployments)
        yield NewReceipt(
            organization_id, provider, push_id, ids, len(shared), first.sent_at or now, first.expires_at
        )


def _token_invalid(wake: Wake, result: PushResult, fingerprint: str | None, now: datetime) -> Invalidation:
    return Invalidation(
        wake.target.device_id,
        result.reason or "rejected",
        result.token_invalid_since or now,
        result.status,
        fingerprint,
        ambiguous=result.outcome is Outcome.dead_token,
    )


def _token_used(wake: Wake) -> TokenUsed:
    return TokenUsed(
        wake.target.device_id, token_digest(wake.target.token), tuple(d.id for d in wake.deployments)
    )


def _undeliverable(
    provider: Provider, wakes: Sequence[tuple[Wake, PushResult | None]], code: str, what: str
) -> list[Undeliverable]:
    """One error per reason: `APNs rejected the device token: Unregistered since …`."""
    by_reason: dict[str, list[tuple[Wake, PushResult | None]]] = defaultdict(list)
    for wake, result in wakes:
        by_reason[_reason_text(result)].append((wake, result))
    errors = []
    name = PROVIDER_NAMES[provider]
    for reason, group in by_reason.items():
        message = f"{name} {what}: {reason}" if reason else f"{name} {what}"
        result = group[0][1]
        detail = {
            "provider": provider.value,
            "status": result and result.status,
            "reason": result and result.reason,
        }
        ids = tuple(d.id for w, _ in group for d in w.deployments)
        errors.append(Undeliverable(ids, ErrorInfo(code, message, detail)))
    return errors


def _failed(answers: Sequence[tuple[Wake, PushResult]]) -> list[FailedPush]:
    """The answers as failed pushes, one per distinct answer, for every deployment their wakes served."""
    by_answer: dict[tuple[Provider, str, int | None, str | None], list[str]] = defaultdict(list)
    for wake, result in answers:
        key = (wake.target.provider, result.outcome.value, result.status, result.reason)
        by_answer[key] += [d.id for d in wake.deployments]
    return [
        FailedPush(tuple(ids), provider, outcome, status, reason, None)
        for (provider, outcome, status, reason), ids in by_answer.items()
    ]


def _turned_away(
    turned_away: Sequence[tuple[Wake, PushResult]], retry: Retry | None, now: datetime
) -> list[FailedPush]:
    """Pushes the provider turned away: those retried go again with the retry's message; the ones past
    their deadline do not (their error says so)."""
    if retry is None:
        return _failed(turned_away)
    retried = set(retry.deployment_ids)
    next_at = now + timedelta(seconds=retry.delay_s)
    failed: list[FailedPush] = []
    for f in _failed(turned_away):
        going = tuple(i for i in f.deployment_ids if i in retried)
        done = tuple(i for i in f.deployment_ids if i not in retried)
        if going:
            failed.append(replace(f, deployment_ids=going, next_attempt_at=next_at))
        if done:
            failed.append(replace(f, deployment_ids=done))
    return failed


def _refused(group: Group, hold: Hold, deployment_ids: Sequence[str], probe_at: datetime) -> FailedPush:
    """The push a hold stopped: the provider's answer when one came, else the refusal (a TLS handshake)."""
    answer = hold.answer
    status = answer.status if answer is not None else None
    reason = (answer.reason if answer is not None else None) or hold.reason
    return FailedPush(tuple(deployment_ids), group.provider, hold.scope.value, status, reason, probe_at)


def _reason_text(result: PushResult | None) -> str:
    if result is None:
        return ""
    since = f" since {result.token_invalid_since:%Y-%m-%d %H:%M} UTC" if result.token_invalid_since else ""
    return f"{result.reason or result.status}{since}"


def _retry(
    turned_away: list[tuple[Wake, PushResult]], *, policies: Policies, failures: int, now: datetime
) -> tuple[list[Undeliverable], Retry | None]:
    """Pushes the provider turned away go again later, with exponential back-off that honours Retry-After;
    past its deadline, a deployment fails instead (the first list). They were no wake-up, so they do not
    count against the device's pushes: a provider's outage only delays a rollout, and fails a deployment
    only at its deadline."""
    give_ups: list[Undeliverable] = []
    retry_ids, delays = [], []
    for wake, result in turned_away:
        for deployment in wake.deployments:
            limits = policies.limits(deployment.organization_id, deployment.kind)
            if now >= deployment.created_at + timedelta(seconds=limits.deadline_s):
                give_ups.append(_give_up(wake, result, deployment, failures=failures, now=now))
                continue
            retry_ids.append(deployment.id)
            wait = backoff_s(failures, limits.push_first_s, limits.push_max_s)
            delays.append(max(wait, result.retry_after_s or 0))
    if not retry_ids:
        return give_ups, None
    return give_ups, Retry(retry_ids, min(delays), failures)


def _give_up(
    wake: Wake, result: PushResult, deployment: Claimed, *, failures: int, now: datetime
) -> Undeliverable:
    provider = PROVIDER_NAMES[wake.target.provider]
    over = wording.duration(now - deployment.created_at)
    message = (
        f"{provider} did not accept the push before the deadline "
        f"({failures} tries in a row over {over}): {_reason_text(result)}"
    )
    detail = {"reason": result.reason, "status": result.status, "tries": failures}
    return Undeliverable((deployment.id,), ErrorInfo("push_unavailable", message, detail))
