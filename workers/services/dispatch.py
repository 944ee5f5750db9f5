"""Dispatch of one chunk: claim it, wake each device once, and write every outcome set-based.

One push per device serves all of that device's deployments in the chunk: the device checks in and fetches
every command queued for it. A device's failure is its own: the chunk goes on, and each outcome class is
written by one statement (receipts, tokens, undeliverable deployments, holds); transient failures come back
as a `Retry` for the actor to enqueue with a delay, never a sleep.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import exc as sa_exc
from sqlmodel import Session

from config.logging import ids_field, log_context
from config.settings import REDELIVER_AFTER_S
from models.enums import Actor, CredentialStatus, Provider
from models.statuses import PUSH_UNDELIVERABLE
from models.store import Effects, ErrorInfo, Move, transition
from models.store._sql import lock_deployments
from models.store.dispatch import (
    Claimed,
    NewReceipt,
    PushTarget,
    claim_for_push,
    credential_unchanged,
    give_back_attempts,
    hold_for_credential,
    mark_credential,
    push_credentials,
    push_targets,
    record_receipts,
)
from models.store.holds import (
    ANSWER_DEAD,
    Invalidation,
    NewHold,
    answer_window,
    devices_served,
    hold_provider,
    invalidate_tokens,
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
from workers.providers.rows import credential_from_row
from workers.push_gateway import PushGateway
from workers.services import wording
from workers.services.valve import Valve, Verdict, answer_marks

log = logging.getLogger(__name__)

SessionFactory = Callable[[], AbstractContextManager[Session]]
# Tries to record a chunk's answers while the database is away, waiting 0.5 s, then twice as long each time
# up to 8 s: some 24 s in all, a restart's worth.
RECORD_ATTEMPTS = 7
PROVIDER_NAMES = {Provider.apns: "APNs", Provider.fcm: "FCM", Provider.aosp: "The AOSP push provider"}
UNDELIVERABLE = Move(PUSH_UNDELIVERABLE, "push undeliverable")
# The first try of one push for a held organization comes this long after the hold (DESIGN §4.3).
HOLD_FIRST_PROBE_S = 60.0
DEFAULT_VALVE = Valve()


@dataclass(frozen=True)
class Retry:
    """Deployments the provider turned away, to be sent again after `delay_s`: the `failures`-th time in a
    row for this message's deployments, which sets the back-off."""

    deployment_ids: list[str]
    delay_s: float
    failures: int


@dataclass
class Wake:
    """One device to wake, and the deployments of the chunk it serves."""

    target: PushTarget
    deployments: list[Claimed]
    result: PushResult | None = None


@dataclass
class DispatchSummary:
    claimed: int = 0
    pushes: int = 0
    accepted: int = 0
    undeliverable: int = 0
    held: int = 0
    retry: Retry | None = None


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
    now = now or utcnow()
    with session() as s:
        claimed = claim_for_push(s, ids=deployment_ids, now=now)
        targets = push_targets(s, device_ids={c.device_id for c in claimed})
        organizations = {c.organization_id for c in claimed}
        credentials = push_credentials(s, organization_ids=organizations)
        holds = provider_holds(s, organization_ids=organizations) if claimed else {}
        policies = Policies(policy, retry_overrides(s, organization_ids=organizations))
    summary = DispatchSummary(claimed=len(claimed))
    groups = [
        _Group(*key, credentials.get(key), wakes, standing=holds.get(key))
        for key, wakes in _group(claimed, targets).items()
    ]
    # Pushes go out with no transaction open: a write lock held across network I/O would stall every other
    # writer (on SQLite, all of them).
    _send_all(gateway, groups)
    for group in groups:
        if group.sent:  # the credential's window, in a short transaction: every worker adds to it at once
            with group.logged():
                _judge(session, group, valve, first_try=failures == 0)
    for group in groups:
        if group.hold_reason is not None:  # in a transaction of its own: the credential row, then the holds
            with group.logged(), session() as s:
                group.hold(s, summary=summary, probe_at=now + timedelta(seconds=first_probe_s))
    # The pushes are out: their answers are recorded even if the database is away for a moment, for a
    # message that failed here would be taken again and push every device of it a second time.
    before = replace(summary)
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        summary = replace(before)
        try:
            _record(
                session,
                groups,
                claimed,
                summary,
                policies=policies,
                failures=failures,
                now=now,
                redeliver_after_s=redeliver_after_s,
            )
        except sa_exc.OperationalError as e:
            if attempt == RECORD_ATTEMPTS:
                raise
            wait_s = min(0.5 * 2 ** (attempt - 1), 8.0)
            log.warning(
                "could not record the answers of %d pushes (%s); trying again in %.1f s",
                sum(len(g.wakes) for g in groups),
                type(e.orig).__name__ if e.orig is not None else type(e).__name__,
                wait_s,
            )
            time.sleep(wait_s)  # a worker thread waiting for the database to come back
        else:
            break
    return summary


def _judge(session: SessionFactory, group: _Group, valve: Valve, *, first_try: bool) -> None:
    """Add the group's answers to its credential's window and judge its dead-token answers on it.

    A retry (`first_try` False) sends again what an earlier try could not settle, often to the same
    devices: its dead-token answers are judged with the window but not written to it, or one device retried
    twenty times would count as twenty devices and hold its organization. With the database away for a
    moment the pushes are out already: the dead-token answers go again later, undecided, rather than
    failing the message (which would push every device of the chunk a second time)."""
    assert group.credential is not None
    fingerprint = group.credential.fingerprint
    marks = answer_marks([w.result for w in group.live if w.result is not None])
    written = marks if first_try else marks.replace(ANSWER_DEAD, "")
    if not valve.needs_writing(fingerprint, marks):
        return
    try:
        with session() as s:
            window = (
                record_answers(s, fingerprint=fingerprint, answers=written, keep=valve.window)
                if written
                else answer_window(s, fingerprint=fingerprint)
            )
            valve.settled.read(fingerprint, window, full=valve.window)
            unwritten = ANSWER_DEAD * (marks.count(ANSWER_DEAD) - written.count(ANSWER_DEAD))
            sample = window + unwritten if len(marks) <= valve.window else marks
            group.judge_dead_tokens(s, valve, window=sample)
    except sa_exc.OperationalError as e:
        log.warning("could not judge dead-token answers (%s): sent again later", type(e).__name__)
        group.undecided()


def _record(
    session: SessionFactory,
    groups: list[_Group],
    claimed: list[Claimed],
    summary: DispatchSummary,
    *,
    policies: Policies,
    failures: int,
    now: datetime,
    redeliver_after_s: float,
) -> None:
    """Write the answers of a chunk's pushes, and what goes again later, in one transaction.

    When every push was accepted (the common case) the deployments are written by one statement, the
    receipts' links, which takes its row locks in id order; otherwise the rows are locked first, in id
    order, for the several statements that follow."""
    with session() as s:
        if not all(group.all_accepted for group in groups):
            lock_deployments(s, ids=[c.id for c in claimed])  # its writes take no row lock after this
        receipts: list[NewReceipt] = []
        repush_at: dict[str, datetime] = {}
        for group in groups:
            with group.logged():
                accepted = group.write(s, summary=summary, now=now)
                receipts += _receipts(group.organization_id, group.provider, accepted, now)
                repush_at |= _repush_at(accepted, policies, now)
                log.info("pushes answered: %s", group.outcomes())
        record_receipts(s, receipts=receipts, repush_at=repush_at)
        summary.retry = _retry(
            s,
            [w for g in groups if g.hold_reason is None for w in g.live],
            policies=policies,
            failures=failures + 1,
            now=now,
            summary=summary,
            redeliver_after_s=redeliver_after_s,
        )


@dataclass
class _Group:
    """The wakes of one organization and provider: one credential, one batch."""

    organization_id: str
    provider: Provider
    credential: PushCredential | None
    wakes: list[Wake]
    standing: ProviderHold | None = None  # the hold this organization and provider are under already
    hold_reason: str | None = None
    # Whose problem the hold is: `credential` marks the credential invalid, `config` leaves it valid.
    hold_scope: Outcome = Outcome.credential
    hold_answer: PushResult | None = field(default=None, repr=False)  # the answer that held it, if any

    @property
    def sent(self) -> bool:
        return self.hold_reason is None and any(w.result is not None for w in self.live)

    @property
    def live(self) -> list[Wake]:
        return [w for w in self.wakes if w.target.token_valid]

    @property
    def all_accepted(self) -> bool:
        return self.hold_reason is None and all(
            w.target.token_valid and w.result is not None and w.result.outcome is Outcome.accepted
            for w in self.wakes
        )

    def outcomes(self) -> str:
        """`12 accepted, 1 permanent, 2 invalid token`: what became of the group's pushes, for its log."""
        if self.hold_reason is not None:
            return f"none sent, held: {self.hold_reason}"
        counts = Counter(w.result.outcome.value for w in self.live if w.result is not None)
        parts = [f"{n} {outcome}" for outcome, n in sorted(counts.items())]
        if dead := len(self.wakes) - len(self.live):
            parts.append(f"{dead} invalid token")
        return ", ".join(parts) or "none"

    def logged(self) -> AbstractContextManager[None]:
        """Lines logged about this group name its organization, provider and deployments."""
        ids = [d.id for w in self.wakes for d in w.deployments]
        return log_context(organization=self.organization_id, provider=self.provider.value, **ids_field(ids))

    def ready(self) -> Credential | None:
        """The credential to send this group's pushes with, or None: nothing to send, or a hold reason set
        because the stored credential cannot be used."""
        if not self.live:
            return None
        if self.standing is not None:
            self.hold_reason, self.hold_scope = self.standing.reason, Outcome(self.standing.scope)
            return None
        self.hold_reason = _unusable(self.provider, self.credential)
        if self.hold_reason is not None:
            return None
        assert self.credential is not None
        try:
            return credential_from_row(self.credential)
        except InvalidCredential as e:
            self.hold_reason = f"{PROVIDER_NAMES[self.provider]} credential refused: {e}"
            return None

    def answered(self, answer: list[PushResult] | Exception) -> None:
        """Fill each wake's result from the provider's answer, or set the hold reason when the credential
        itself was refused. An exception no provider raises is a bug, and fails the message."""
        name = PROVIDER_NAMES[self.provider]
        if isinstance(answer, InvalidCredential | CredentialRejected):
            self.hold_reason = f"{name} credential refused: {answer}"
            return
        if isinstance(answer, ProviderError | TimeoutError):
            log.warning("push batch failed: %s", answer)
            answer = [
                PushResult(w.target.device_id, Outcome.transient, reason=type(answer).__name__)
                for w in self.live
            ]
        elif isinstance(answer, Exception):
            raise answer
        count_answers(self.provider.value, answer)
        for wake, result in zip(self.live, answer, strict=True):
            wake.result = result
        if refused := next((r for r in answer if r.outcome is Outcome.credential), None):
            self._held_by(refused, f"{name} refused the credential: {refused.reason}")
        elif misconfigured := next((r for r in answer if r.outcome is Outcome.config), None):
            self._held_by(misconfigured, f"{name} refused the configuration: {misconfigured.reason}")

    def _held_by(self, answer: PushResult, fallback: str) -> None:
        self.hold_reason = answer.advice or fallback
        self.hold_scope, self.hold_answer = answer.outcome, answer

    def judge_dead_tokens(self, s: Session, valve: Valve, *, window: str) -> None:
        """Judge the batch's dead-token answers on the credential's `window` (the batch included): the
        devices' (their tokens are invalidated), the organization's (a hold; no token is touched), or too
        few answers to tell (sent again with the next batch)."""
        dead = [w for w in self.live if w.result is not None and w.result.outcome is Outcome.dead_token]
        if not dead:
            return
        verdict = valve.judge(
            window,
            devices_served=lambda n: devices_served(
                s, organization_id=self.organization_id, provider=self.provider, at_most=n
            ),
        )
        first = dead[0].result
        assert first is not None
        log.warning(
            "%d of %d answers in the credential's window are dead-token answers (%s): %s",
            window.count(ANSWER_DEAD),
            len(window),
            first.reason,
            verdict.value,
        )
        if verdict is Verdict.organization:
            name = PROVIDER_NAMES[self.provider]
            self.hold_reason = first.advice or f"{name} answered {first.reason} for most devices"
            self.hold_scope, self.hold_answer = Outcome.config, first
        elif verdict is Verdict.undecided:
            self.undecided()

    def undecided(self) -> None:
        """Dead-token answers nobody could judge: sent again with a later batch, as transient failures."""
        for wake in self.live:
            if wake.result is not None and wake.result.outcome is Outcome.dead_token:
                wake.result = replace(wake.result, outcome=Outcome.transient)

    def hold(self, s: Session, *, summary: DispatchSummary, probe_at: datetime) -> None:
        """Hold every Queued deployment of the organization for this provider: the credential was refused.
        If an operator stored another credential since this batch read it, hold nothing: the batch's
        pushes come back as a transient failure, to go out with the new one."""
        assert self.hold_reason is not None
        fingerprint = self.credential.fingerprint if self.credential is not None else None
        replaced = not credential_unchanged(
            s, organization_id=self.organization_id, provider=self.provider, fingerprint=fingerprint
        )
        released = self.standing is not None and not still_held(
            s, hold=self.standing, organization_id=self.organization_id, provider=self.provider
        )
        if replaced or released:  # the batch goes again, with the new credential or unheld
            self.hold_reason = None
            for wake in self.live:
                wake.result = PushResult(
                    wake.target.device_id,
                    Outcome.transient,
                    reason="credential replaced" if replaced else "hold released",
                )
            return
        _hold(s, self, summary=summary, probe_at=probe_at)
        # No device was woken: the claim's count is given back, as for a provider's 5xx, so a rollout whose
        # key was revoked and renewed keeps every wake-up its policy allows. (The next attempt time of a
        # held deployment is the release's to set.)
        ids = [d.id for w in self.live for d in w.deployments]
        give_back_attempts(s, ids=ids, redeliver_at=utcnow())

    def write(self, s: Session, *, summary: DispatchSummary, now: datetime) -> list[Wake]:
        """Write what the provider's answers settle; returns the accepted wakes, whose receipts the caller
        records with every other group's."""
        dead = [w for w in self.wakes if not w.target.token_valid]
        _undeliverable(
            s, self.provider, dead, "invalid_token", "has an invalid token for the device", summary=summary
        )
        if not self.live or self.hold_reason is not None:
            return []
        return _write_results(s, self, wakes=self.live, summary=summary, now=now)


def _group(claimed: list[Claimed], targets: dict[str, PushTarget]) -> dict[tuple[str, Provider], list[Wake]]:
    by_device: dict[str, Wake] = {}
    for deployment in claimed:
        target = targets.get(deployment.device_id)
        if target is None:  # the device row went away; nothing to wake
            continue
        by_device.setdefault(deployment.device_id, Wake(target, [])).deployments.append(deployment)
    groups: dict[tuple[str, Provider], list[Wake]] = defaultdict(list)
    for wake in by_device.values():
        groups[(wake.deployments[0].organization_id, wake.target.provider)].append(wake)
    return groups


def _unusable(provider: Provider, credential: PushCredential | None) -> str | None:
    if credential is None:
        return f"no {PROVIDER_NAMES[provider]} credential"
    if credential.status in (CredentialStatus.expired, CredentialStatus.revoked, CredentialStatus.invalid):
        return f"{PROVIDER_NAMES[provider]} credential {credential.status.value}"
    return None


def _send_all(gateway: PushGateway, groups: list[_Group]) -> None:
    """Send every group's pushes at once, so a chunk for APNs, FCM and AOSP devices waits for its slowest
    provider rather than for each in turn; then fill each group's results or hold reason."""
    sending: list[tuple[_Group, Credential]] = []
    for group in groups:
        with group.logged():
            if (credential := group.ready()) is not None:
                sending.append((group, credential))
    if not sending:
        return
    batches = [
        (g.organization_id, credential, [wake_up(w.target) for w in g.live]) for g, credential in sending
    ]
    try:
        answers = gateway.send_all(batches)
    except TimeoutError as e:
        answers = [e] * len(sending)
    for (group, _), answer in zip(sending, answers, strict=True):
        with group.logged():
            group.answered(answer)


def wake_up(target: PushTarget) -> Push:
    """The push that wakes a device: an MDM wake-up with its PushMagic for Apple devices, a check-in data
    message for the others. Dispatches, the hold probe and the credential check send the same one."""
    if target.provider is Provider.apns:
        return Push(target.device_id, token=target.token, push_magic=target.push_magic)
    return Push(target.device_id, token=target.token, push_type=PushType.data, payload={"action": "checkin"})


def _write_results(
    s: Session, group: _Group, *, wakes: list[Wake], summary: DispatchSummary, now: datetime
) -> list[Wake]:
    provider = group.provider
    by_outcome: dict[Outcome, list[Wake]] = defaultdict(list)
    for wake in wakes:
        assert wake.result is not None
        by_outcome[wake.result.outcome].append(wake)
    summary.pushes += len(wakes)
    summary.accepted += len(by_outcome[Outcome.accepted])
    # Judged the devices' by the valve by now: an undecided one went back to transient, and a verdict
    # against the organization held the group before it got here.
    dead = by_outcome[Outcome.permanent] + by_outcome[Outcome.dead_token]
    fingerprint = group.credential.fingerprint if group.credential is not None else None
    invalidate_tokens(s, invalidations=[_token_invalid(w, fingerprint, now) for w in dead])
    for reason, count in Counter(reason_label(w.result) for w in dead if w.result).items():
        TOKENS_INVALIDATED.labels(group.organization_id, provider.value, reason).inc(count)
    _undeliverable(s, provider, dead, "push_token_rejected", "rejected the device token", summary=summary)
    rejected = by_outcome[Outcome.payload_rejected]
    _undeliverable(s, provider, rejected, "push_payload_rejected", "rejected the push", summary=summary)
    return by_outcome[Outcome.accepted]


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
    organization_id: str, provider: Provider, wakes: list[Wake], now: datetime
) -> Iterator[NewReceipt]:
    by_push: dict[str | None, list[Wake]] = defaultdict(list)
    for wake in wakes:
        assert wake.result is not None
        by_push[wake.result.push_id].append(wake)
    for push_id, shared in by_push.items():
        first = shared[0].result
        assert first is not None
        ids = [d.id for w in shared for d in w.deployments]
        yield NewReceipt(
            organization_id, provider, push_id, ids, len(shared), first.sent_at or now, first.expires_at
        )


def _token_invalid(wake: Wake, fingerprint: str | None, now: datetime) -> Invalidation:
    result = wake.result
    assert result is not None
    return Invalidation(
        wake.target.device_id,
        result.reason or "rejected",
        result.token_invalid_since or now,
        result.status,
        fingerprint,
        ambiguous=result.outcome is Outcome.dead_token,
    )


def _undeliverable(
    s: Session, provider: Provider, wakes: list[Wake], code: str, what: str, *, summary: DispatchSummary
) -> None:
    by_reason: dict[str, list[Wake]] = defaultdict(list)
    for wake in wakes:
        by_reason[_reason_text(wake)].append(wake)
    for reason, group in by_reason.items():
        message = (
            f"{PROVIDER_NAMES[provider]} {what}: {reason}" if reason else f"{PROVIDER_NAMES[provider]} {what}"
        )
        result = group[0].result
        detail = {
            "provider": provider.value,
            "status": result and result.status,
            "reason": result and result.reason,
        }
        ids = [d.id for w in group for d in w.deployments]
        effects = Effects(error=ErrorInfo(code, message, detail))
        applied = transition(s, ids=ids, move=UNDELIVERABLE, actor=Actor.worker, effects=effects)
        summary.undeliverable += len(applied.applied)


def _reason_text(wake: Wake) -> str:
    result = wake.result
    if result is None:
        return ""
    since = f" since {result.token_invalid_since:%Y-%m-%d %H:%M} UTC" if result.token_invalid_since else ""
    return f"{result.reason or result.status}{since}"


def _hold(s: Session, group: _Group, *, summary: DispatchSummary, probe_at: datetime) -> None:
    """Hold the organization's Queued deployments for the group's provider. A refused credential is marked
    invalid; a configuration answer leaves it valid. With a credential to try, the hold is recorded for the
    scheduler's probe, which releases it when one push goes through."""
    organization_id, provider, credential = group.organization_id, group.provider, group.credential
    reason = group.hold_reason
    assert reason is not None
    held = hold_for_credential(s, organization_id=organization_id, provider=provider, reason=reason)
    summary.held += held
    HOLDS.labels(provider.value).inc(held)
    if credential is not None and group.hold_scope is Outcome.credential:
        mark_credential(
            s,
            credential_id=credential.id,
            fingerprint=credential.fingerprint,
            status=CredentialStatus.invalid,
            reason=reason,
            only_from=(CredentialStatus.valid, CredentialStatus.expiring),
        )
    if credential is not None and group.standing is None:
        answer = group.hold_answer
        hold = NewHold(
            organization_id,
            provider,
            group.hold_scope.value,
            reason,
            answer.reason[:64] if answer is not None and answer.reason else None,
            credential.fingerprint,
        )
        hold_provider(s, hold=hold, probe_at=probe_at, now=utcnow())
    extra = {"organization": organization_id, "provider": provider.value, "held": held}
    log.error("deployments held: %s", reason, extra=extra)


def _retry(
    s: Session,
    wakes: list[Wake],
    *,
    policies: Policies,
    failures: int,
    now: datetime,
    summary: DispatchSummary,
    redeliver_after_s: float,
) -> Retry | None:
    """Pushes the provider turned away go again later, with exponential back-off that honours Retry-After.
    They were no wake-up, so they do not count against the device's pushes: a provider's outage only
    delays a rollout, and fails a deployment only at its deadline."""
    transient = [w for w in wakes if w.result is not None and w.result.outcome is Outcome.transient]
    if not transient:
        return None
    retry_ids, delays = [], []
    for wake in transient:
        assert wake.result is not None
        for deployment in wake.deployments:
            limits = policies.limits(deployment.organization_id, deployment.kind)
            if now >= deployment.created_at + timedelta(seconds=limits.deadline_s):
                _give_up(s, wake, deployment, failures=failures, now=now, summary=summary)
                continue
            retry_ids.append(deployment.id)
            wait = backoff_s(failures, limits.push_first_s, limits.push_max_s)
            delays.append(max(wait, wake.result.retry_after_s or 0))
    if not retry_ids:
        return None
    delay_s = min(delays)
    # Should the delayed message be lost, the re-push sweep sends them once it is overdue.
    give_back_attempts(s, ids=retry_ids, redeliver_at=now + timedelta(seconds=delay_s + redeliver_after_s))
    return Retry(retry_ids, delay_s, failures)


def _give_up(
    s: Session, wake: Wake, deployment: Claimed, *, failures: int, now: datetime, summary: DispatchSummary
) -> None:
    assert wake.result is not None
    provider = PROVIDER_NAMES[wake.target.provider]
    over = wording.duration(now - deployment.created_at)
    message = (
        f"{provider} did not accept the push before the deadline "
        f"({failures} tries in a row over {over}): {_reason_text(wake)}"
    )
    detail = {"reason": wake.result.reason, "status": wake.result.status, "tries": failures}
    effects = Effects(error=ErrorInfo("push_unavailable", message, detail))
    applied = transition(s, ids=[deployment.id], move=UNDELIVERABLE, actor=Actor.worker, effects=effects)
    summary.undeliverable += len(applied.applied)
