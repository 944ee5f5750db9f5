"""What a dispatch reads and writes: the claim, devices and credentials, receipts, tokens, holds."""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import Session, SQLModel, col, select

from models.enums import Actor, CredentialStatus, Provider, TokenState
from models.push_tokens import token_digest
from models.statuses import PUSH_UNDELIVERABLE, Kind, Status
from models.store._sql import (
    DEPLOYMENT,
    DEVICE,
    IDS_PER_STATEMENT,
    chunked,
    dialect_of,
    in_id_order,
    lock_deployments,
    one_of,
    run,
    update_deployments,
)
from models.store.attempts import FailedPush, record_failed_pushes
from models.store.transitions import Effects, ErrorInfo, Move, transition
from models.tables import PushCredential
from models.types import utcnow

RECEIPT = SQLModel.metadata.tables["push_receipt"]
UNDELIVERABLE = Move(PUSH_UNDELIVERABLE, "push undeliverable")


@dataclass(frozen=True)
class Claimed:
    """A Queued deployment this dispatch now pushes for."""

    id: str
    organization_id: str
    device_id: str
    kind: Kind
    attempt_count: int
    created_at: datetime


@dataclass(frozen=True)
class PushTarget:
    device_id: str
    provider: Provider
    token: str = field(repr=False)
    push_magic: str | None = field(repr=False)
    token_valid: bool
    topic: str | None = None  # an Apple device's enrollment topic: its pushes go under it
    enrolled: bool = True


@dataclass(frozen=True)
class NewReceipt:
    organization_id: str
    provider: Provider
    provider_push_id: str | None
    deployment_ids: Sequence[str]
    device_count: int
    sent_at: datetime
    expires_at: datetime | None


def claim_for_push(session: Session, *, ids: Sequence[str], now: datetime) -> list[Claimed]:
    """Claim those of `ids` still Queued and not held for a push: one conditional UPDATE per batch.

    A wake-up counts once each time a deployment is enqueued (created, re-queued, released, or taken again by
    the re-push sweep): a second message for it (a redelivery after a crash, or a rollout's message still
    on the queue when a hold was released and the release sent its own) claims it again and costs at worst
    a second wake-up push, but it is one chance to check in, not two."""
    if dialect_of(session) == "postgresql":
        rows = [
            row
            for batch in chunked(list(dict.fromkeys(ids)), IDS_PER_STATEMENT)
            for row in run(session, _CLAIM, {"b_ids": batch, "b_now": now})
        ]
    else:
        rows = update_deployments(
            session, ids=ids, where=_CLAIMABLE, values=_claim_values(now), returning=_CLAIMED
        )
    return [
        Claimed(r.id, r.organization_id, r.device_id, Kind(r.kind), r.attempt_count, r.created_at)
        for r in rows
    ]


def _claim_values(now: datetime | sa.BindParameter[datetime]) -> dict[str, Any]:
    c = DEPLOYMENT.c
    not_pushed_since_enqueued = sa.or_(
        c.pushed_at.is_(None), c.enqueued_at.is_(None), c.pushed_at < c.enqueued_at
    )
    return {
        "attempt_count": c.attempt_count + sa.case((not_pushed_since_enqueued, 1), else_=0),
        "pushed_at": now,
        "enqueued_at": sa.func.coalesce(c.enqueued_at, now),
    }


_CLAIMABLE = sa.and_(DEPLOYMENT.c.status == Status.queued.value, DEPLOYMENT.c.hold_reason.is_(None))
_CLAIMED = tuple(DEPLOYMENT.c[name] for name in Claimed.__dataclass_fields__)
# The claim on PostgreSQL, built once: building it anew for every chunk cost more client CPU than running
# it. Its rows are locked first, in id order, as `update_deployments` locks them.
_CLAIM = (
    sa.update(DEPLOYMENT)
    .where(
        DEPLOYMENT.c.id
        == sa.any_(
            sa.func.array(
                sa.select(DEPLOYMENT.c.id)
                .where(
                    DEPLOYMENT.c.id == sa.any_(sa.bindparam("b_ids", type_=ARRAY(DEPLOYMENT.c.id.type))),
                    _CLAIMABLE,
                )
                .order_by(DEPLOYMENT.c.id)
                .with_for_update()
                .scalar_subquery()
            )
        )
    )
    .values(_claim_values(sa.bindparam("b_now", type_=DEPLOYMENT.c.pushed_at.type)))
    .returning(*_CLAIMED)
)


def give_back_attempts(
    session: Session, *, ids: Sequence[str], redeliver_at: datetime | None, claimed_at: datetime | None = None
) -> None:
    """Undo the claim's count for pushes the provider turned away (a 5xx, a 429, a lost connection, a refused
    credential): the device was not woken, so the wake-ups it is allowed stay as they were, and the push
    that does reach it counts. The re-push sweep takes them again at `redeliver_at`, should the retry's
    message be lost (None: their next attempt time stays, another message sends them). `claimed_at`: give
    back only the claim made then (its `pushed_at`), once."""
    c = DEPLOYMENT.c
    condition = c.status == Status.queued.value
    if claimed_at is not None:
        condition = sa.and_(condition, c.pushed_at == claimed_at)
    given_back = sa.case((c.attempt_count > 0, c.attempt_count - 1), else_=0)
    values: dict[str, Any] = {"attempt_count": given_back, "pushed_at": None}
    if redeliver_at is not None:
        values["next_attempt_at"] = redeliver_at
    update_deployments(session, ids=sorted(set(ids)), where=condition, values=values)


def push_targets(session: Session, *, device_ids: Collection[str]) -> dict[str, PushTarget]:
    targets: dict[str, PushTarget] = {}
    postgresql = dialect_of(session) == "postgresql"
    for batch in chunked(sorted(device_ids), IDS_PER_STATEMENT):
        if postgresql:
            rows = run(session, _TARGETS, {"b_ids": batch})
        else:
            rows = run(session, _TARGET_COLUMNS.where(DEVICE.c.id.in_(batch)))
        for r in rows:
            valid = r.token_state == TokenState.valid.value
            enrolled = r.unenrolled_at is None
            targets[r.id] = PushTarget(
                r.id, Provider(r.provider), r.push_token, r.push_magic, valid, r.topic, enrolled
            )
    return targets


_TARGET_COLUMNS = sa.select(
    DEVICE.c.id,
    DEVICE.c.provider,
    DEVICE.c.push_token,
    DEVICE.c.push_magic,
    DEVICE.c.token_state,
    DEVICE.c.topic,
    DEVICE.c.unenrolled_at,
)
_TARGETS = _TARGET_COLUMNS.where(DEVICE.c.id == sa.any_(sa.bindparam("b_ids", type_=ARRAY(DEVICE.c.id.type))))


def push_credentials(
    session: Session, *, organization_ids: Collection[str]
) -> dict[tuple[str, Provider], PushCredential]:
    rows = session.exec(_CREDENTIALS, params={"b_organizations": list(organization_ids)})
    return {(row.organization_id, row.provider): row for row in rows}


_CREDENTIALS = select(PushCredential).where(
    col(PushCredential.organization_id).in_(sa.bindparam("b_organizations", expanding=True))
)


def push_credential(
    session: Session, *, organization_id: str, provider: Provider, lock: bool = False
) -> PushCredential | None:
    """The organization's credential for `provider`, or None; `lock` holds its row till the end of the
    transaction (an upload against another at the same moment)."""
    statement = select(PushCredential).where(
        PushCredential.organization_id == organization_id, PushCredential.provider == provider
    )
    return session.exec(statement.with_for_update() if lock else statement).first()


def record_receipts(
    session: Session, *, receipts: Sequence[NewReceipt], repush_at: Mapping[str, datetime]
) -> None:
    """One receipt per push sent, each woken deployment pointed at its receipt: two set-based statements."""
    if not receipts:
        return
    rows = [
        {
            "organization_id": r.organization_id,
            "provider": r.provider.value,
            "provider_push_id": r.provider_push_id,
            "device_count": r.device_count,
            "sent_at": r.sent_at,
            "expires_at": r.expires_at,
        }
        for r in receipts
    ]
    links = sorted(  # row locks in id order, as every write takes them
        (deployment_id, receipt_id)
        for receipt_id, receipt in zip(_insert_receipts(session, rows), receipts, strict=True)
        for deployment_id in receipt.deployment_ids
    )
    if dialect_of(session) == "postgresql":
        _link_from_arrays(session, links, repush_at)
        return
    queued = Status.queued.value
    params = [
        {"b_deployment": d, "b_receipt": r, "b_repush": repush_at[d], "b_queued": queued} for d, r in links
    ]
    run(session, _LINK, params)


def _link_from_arrays(
    session: Session, links: Sequence[tuple[str, int]], repush_at: Mapping[str, datetime]
) -> None:
    """The links on PostgreSQL: one UPDATE from three arrays, its rows locked first in id order. A statement
    a row, even prepared and pipelined, cost the worker some 40 µs of psycopg's Python a deployment, most of
    a chunk's record."""
    ids = [deployment_id for deployment_id, _ in links]
    params = {
        "b_ids": ids,
        "b_receipts": [receipt_id for _, receipt_id in links],
        "b_repush": [repush_at[deployment_id] for deployment_id in ids],
        "b_queued": Status.queued.value,
    }
    connection = session.connection()
    connection.exec_driver_sql(_sql_of(_LINK_ARRAYS, connection.dialect), params)


# Queued with a receipt, a deployment waits for the device; if no check-in comes by then, the sweep re-pushes.
# A device that answered since the push was sent keeps its own retry time (a NotNow's).
_LINK = (
    sa.update(DEPLOYMENT)
    .where(DEPLOYMENT.c.id == sa.bindparam("b_deployment"))
    .values(
        receipt_id=sa.bindparam("b_receipt"),
        next_attempt_at=sa.case(
            (DEPLOYMENT.c.status == sa.bindparam("b_queued"), sa.bindparam("b_repush")),
            else_=DEPLOYMENT.c.next_attempt_at,
        ),
    )
)


_GIVEN = (
    sa.func.unnest(
        sa.bindparam("b_ids", type_=ARRAY(DEPLOYMENT.c.id.type)),
        sa.bindparam("b_receipts", type_=ARRAY(DEPLOYMENT.c.receipt_id.type)),
        sa.bindparam("b_repush", type_=ARRAY(sa.DateTime(timezone=True))),
    )
    .table_valued("id", "receipt", "repush")
    .render_derived(name="given")
)
_LOCKED = (
    sa.select(DEPLOYMENT.c.id)
    .where(DEPLOYMENT.c.id == sa.any_(sa.bindparam("b_ids", type_=ARRAY(DEPLOYMENT.c.id.type))))
    .order_by(DEPLOYMENT.c.id)
    .with_for_update()
)
# `_LINK` from arrays: the rows are locked by the ARRAY(...) sub-select, which runs once, before the UPDATE
# and whatever its plan (as `in_id_order` does), so that two chunks' links never deadlock.
_LINK_ARRAYS = (
    sa.update(DEPLOYMENT)
    .where(DEPLOYMENT.c.id == _GIVEN.c.id)
    .where(DEPLOYMENT.c.id == sa.any_(sa.func.array(_LOCKED.scalar_subquery())))
    .values(
        receipt_id=_GIVEN.c.receipt,
        next_attempt_at=sa.case(
            (DEPLOYMENT.c.status == sa.bindparam("b_queued"), _GIVEN.c.repush),
            else_=DEPLOYMENT.c.next_attempt_at,
        ),
    )
)


@functools.cache
def _sql_of(statement: sa.Update, dialect: sa.Dialect) -> str:
    """`statement` as the driver of `dialect` takes it, compiled once per engine's dialect."""
    return str(statement.compile(dialect=dialect))


def _insert_receipts(session: Session, rows: list[dict[str, Any]]) -> list[int]:
    """Insert the receipts; their ids, in the order of `rows`."""
    if dialect_of(session) != "postgresql":
        inserted = run(
            session, sa.insert(RECEIPT).returning(RECEIPT.c.id, sort_by_parameter_order=True), rows
        )
        return list(inserted.scalars())
    # One INSERT from arrays, a parameter per column (a VALUES list of 150 receipts is 900 parameters, which
    # psycopg parses anew every time). Its rows are inserted in the arrays' order and take their ids from
    # the sequence as they are, so the ids sorted are the ids in that order: what SQLAlchemy's own
    # `sort_by_parameter_order` relies on for a serial key.
    params = {f"b_{name}": [row[name] for row in rows] for name in _RECEIPT_COLUMNS}
    return sorted(run(session, _INSERT_RECEIPTS, params).scalars())


_RECEIPT_COLUMNS = (
    "organization_id",
    "provider",
    "provider_push_id",
    "device_count",
    "sent_at",
    "expires_at",
)
_GIVEN_RECEIPTS = (
    sa.func.unnest(
        *(sa.bindparam(f"b_{name}", type_=ARRAY(RECEIPT.c[name].type)) for name in _RECEIPT_COLUMNS)
    )
    .table_valued(*_RECEIPT_COLUMNS, with_ordinality="position")
    .render_derived()
)
# Built once, as the claim is.
_INSERT_RECEIPTS = (
    sa.insert(RECEIPT)
    .from_select(
        _RECEIPT_COLUMNS,
        sa.select(*(_GIVEN_RECEIPTS.c[name] for name in _RECEIPT_COLUMNS)).order_by(
            _GIVEN_RECEIPTS.c.position
        ),
    )
    .returning(RECEIPT.c.id)
)


def _queued_for_provider(organization_id: str, provider: Provider) -> sa.ColumnElement[bool]:
    """Queued deployments of the organization whose devices this provider wakes."""
    devices = sa.select(DEVICE.c.id).where(
        DEVICE.c.organization_id == organization_id, DEVICE.c.provider == provider.value
    )
    return sa.and_(
        DEPLOYMENT.c.organization_id == organization_id,
        DEPLOYMENT.c.status == Status.queued.value,
        DEPLOYMENT.c.device_id.in_(devices),
    )


def credential_unchanged(
    session: Session, *, organization_id: str, provider: Provider, fingerprint: str | None
) -> bool:
    """Is the organization's credential for `provider` still the one read before (None: still none)? Locks
    its row till the end of the transaction, so that an upload waits for a hold decided on the old one."""
    statement = (
        select(PushCredential.fingerprint)
        .where(PushCredential.organization_id == organization_id, PushCredential.provider == provider)
        .with_for_update()
    )
    current = session.exec(statement).first()
    return current == fingerprint


def mark_credential(
    session: Session,
    *,
    credential_id: str,
    fingerprint: str,
    status: CredentialStatus,
    reason: str,
    only_from: Collection[CredentialStatus],
) -> bool:
    """Set the status of the credential with this id, if it still holds the material with `fingerprint` and
    is in one of `only_from`: a verdict on old material never lands on the one that replaced it."""
    table = SQLModel.metadata.tables["push_credential"]
    statement = (
        sa.update(table)
        .where(
            table.c.id == credential_id,
            table.c.fingerprint == fingerprint,
            table.c.status.in_([s.value for s in only_from]),
        )
        .values(status=status.value, status_reason=reason[:500])
    )
    return bool(run(session, statement).rowcount)


def hold_for_credential(session: Session, *, organization_id: str, provider: Provider, reason: str) -> int:
    """Hold every Queued deployment of the organization that this provider wakes; returns how many."""
    statement = (
        sa.update(DEPLOYMENT)
        .where(
            in_id_order(
                session,
                sa.and_(_queued_for_provider(organization_id, provider), DEPLOYMENT.c.hold_reason.is_(None)),
            )
        )
        .values(hold_reason=reason[:200])
    )
    return int(run(session, statement).rowcount)


def hold_for_topic(session: Session, *, ids: Sequence[str], reason: str) -> int:
    """Hold these Queued deployments, whose devices enrolled under a topic the organization's certificate
    does not serve; returns how many. Released as any hold is: by a credential of their topic."""
    rows = update_deployments(
        session,
        ids=sorted(ids),
        where=DEPLOYMENT.c.status == Status.queued.value,
        values={"hold_reason": reason[:200]},
        returning=(DEPLOYMENT.c.id,),
    )
    return len(rows)


def release_holds(
    session: Session, *, organization_id: str, provider: Provider, now: datetime | None = None
) -> list[str]:
    """Release the organization's deployments held for this provider's credential; returns their ids for the
    caller to enqueue. Marked not enqueued: should the caller never send them, the relay will."""
    statement = (
        sa.update(DEPLOYMENT)
        .where(
            in_id_order(
                session,
                sa.and_(
                    _queued_for_provider(organization_id, provider), DEPLOYMENT.c.hold_reason.is_not(None)
                ),
            )
        )
        .values(hold_reason=None, enqueued_at=None, next_attempt_at=None, updated_at=now or utcnow())
        .returning(DEPLOYMENT.c.id)
    )
    return list(run(session, statement).scalars())


@dataclass(frozen=True)
class Invalidation:
    """One device token found dead: the provider's reason and status, the credential it was sent with, and
    whether the answer is one the providers also give for every device of a misconfigured credential."""

    device_id: str
    reason: str
    since: datetime
    status: int | None
    fingerprint: str | None
    ambiguous: bool


@dataclass(frozen=True)
class TokenUsed:
    """The token a dispatch read for a device whose deployments it found undeliverable for their token (dead
    when read, or answered dead), by its digest: a record may travel as a message. A token update since
    then makes the answer the old token's, not the device's."""

    device_id: str
    digest: str
    deployment_ids: tuple[str, ...]


def tokens_replaced(session: Session, *, used: Sequence[TokenUsed]) -> list[TokenUsed]:
    """Of the tokens a dispatch used, those its device no longer has: a token update came since. The devices'
    rows are locked till the end of the transaction on PostgreSQL, so that no update lands between this read
    and the writes that trust it."""
    by_device = {u.device_id: u for u in used}
    c = DEVICE.c
    replaced: list[TokenUsed] = []
    for batch in chunked(sorted(by_device), IDS_PER_STATEMENT):
        statement = sa.select(c.id, c.push_token).where(one_of(session, c.id, batch)).order_by(c.id)
        if dialect_of(session) == "postgresql":
            statement = statement.with_for_update()
        for r in run(session, statement):
            if token_digest(r.push_token) != by_device[r.id].digest:
                replaced.append(by_device[r.id])
    return replaced


def invalidate_tokens(session: Session, *, invalidations: Iterable[Invalidation]) -> int:
    """Mark device tokens invalid with their record; returns how many were valid before."""
    params = [
        {
            "device": i.device_id,
            "reason": i.reason[:200],
            "since": i.since,
            "status": i.status,
            "fingerprint": i.fingerprint,
            "ambiguous": i.ambiguous,
        }
        for i in sorted(invalidations, key=lambda i: i.device_id)
    ]
    if not params:
        return 0
    statement = (
        sa.update(DEVICE)
        .where(DEVICE.c.id == sa.bindparam("device"), DEVICE.c.token_state == TokenState.valid.value)
        .values(
            token_state=TokenState.invalid.value,
            token_invalid_reason=sa.bindparam("reason"),
            token_invalid_at=sa.bindparam("since"),
            token_invalid_status=sa.bindparam("status"),
            token_invalid_fingerprint=sa.bindparam("fingerprint"),
            token_invalid_ambiguous=sa.bindparam("ambiguous"),
        )
    )
    return int(run(session, statement, params).rowcount)


# -- a dispatch's record ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Undeliverable:
    """Deployments whose push cannot be delivered, and the error an admin reads for them."""

    deployment_ids: tuple[str, ...]
    error: ErrorInfo


@dataclass(frozen=True)
class DispatchRecord:
    """Everything one dispatch writes once its pushes are answered, as plain values: what `record_dispatch`
    writes in one transaction, and what a record-only message carries when that transaction failed.

    `claimed_at`: when the claim was made (the deployments' `pushed_at`); `lock`: lock every claimed row
    first, in id order, for the several statements that follow (not needed when every push was accepted)."""

    claimed_at: datetime
    claimed_ids: tuple[str, ...]
    lock: bool
    invalidations: tuple[Invalidation, ...] = ()
    undeliverable: tuple[Undeliverable, ...] = ()
    receipts: tuple[NewReceipt, ...] = ()
    repush_at: Mapping[str, datetime] = field(default_factory=dict)
    give_back: tuple[str, ...] = ()  # turned away: their claim's count is given back, to go again later
    redeliver_at: datetime | None = None  # when the re-push sweep takes `give_back` again, should all be lost
    failed: tuple[FailedPush, ...] = ()  # the answers that woke nobody, for the deployments' history
    tokens: tuple[TokenUsed, ...] = ()  # the tokens behind `invalidations` and the token errors

    @property
    def pushes_answered(self) -> int:
        return sum(r.device_count for r in self.receipts) + len(self.invalidations)

    def as_message(self) -> dict[str, Any]:
        """This record as JSON-ready data (a message's argument); `from_message` reads it back."""
        return {
            "claimed_at": self.claimed_at.isoformat(),
            "claimed_ids": list(self.claimed_ids),
            "lock": self.lock,
            "invalidations": [
                [i.device_id, i.reason, i.since.isoformat(), i.status, i.fingerprint, i.ambiguous]
                for i in self.invalidations
            ],
            "undeliverable": [
                [list(u.deployment_ids), u.error.code, u.error.message, _plain(u.error.detail)]
                for u in self.undeliverable
            ],
            "receipts": [
                [
                    r.organization_id,
                    r.provider.value,
                    r.provider_push_id,
                    list(r.deployment_ids),
                    r.device_count,
                    r.sent_at.isoformat(),
                    r.expires_at.isoformat() if r.expires_at is not None else None,
                ]
                for r in self.receipts
            ],
            "repush_at": {i: at.isoformat() for i, at in self.repush_at.items()},
            "give_back": list(self.give_back),
            "redeliver_at": self.redeliver_at.isoformat() if self.redeliver_at is not None else None,
            "failed": [
                [
                    list(f.deployment_ids),
                    f.provider.value,
                    f.outcome,
                    f.status,
                    f.reason,
                    f.next_attempt_at.isoformat() if f.next_attempt_at is not None else None,
                ]
                for f in self.failed
            ],
            "tokens": [[t.device_id, t.digest, list(t.deployment_ids)] for t in self.tokens],
        }

    @classmethod
    def from_message(cls, data: Mapping[str, Any]) -> DispatchRecord:
        at = datetime.fromisoformat
        return cls(
            claimed_at=at(data["claimed_at"]),
            claimed_ids=tuple(data["claimed_ids"]),
            lock=bool(data["lock"]),
            invalidations=tuple(
                Invalidation(device, reason, at(since), status, fingerprint, ambiguous=ambiguous)
                for device, reason, since, status, fingerprint, ambiguous in data["invalidations"]
            ),
            undeliverable=tuple(
                Undeliverable(tuple(ids), ErrorInfo(code, message, detail))
                for ids, code, message, detail in data["undeliverable"]
            ),
            receipts=tuple(
                NewReceipt(
                    organization, Provider(provider), push_id, tuple(ids), count, at(sent), _at(expires)
                )
                for organization, provider, push_id, ids, count, sent, expires in data["receipts"]
            ),
            repush_at={i: at(value) for i, value in data["repush_at"].items()},
            give_back=tuple(data["give_back"]),
            redeliver_at=_at(data["redeliver_at"]),
            failed=tuple(
                FailedPush(tuple(ids), Provider(provider), outcome, status, reason, _at(next_at))
                for ids, provider, outcome, status, reason, next_at in data.get("failed", ())
            ),
            tokens=tuple(
                TokenUsed(device, digest, tuple(ids)) for device, digest, ids in data.get("tokens", ())
            ),
        )


@dataclass(frozen=True)
class Recorded:
    undeliverable: int  # deployments this record moved to Error distributing or Failed
    already: bool = False  # written before (a redelivered record-only message): nothing written again


def record_dispatch(session: Session, *, record: DispatchRecord, again: bool = False) -> Recorded:
    """Write a dispatch's answers in the session's transaction: invalidated tokens, undeliverable
    deployments, receipts and the links to them, the claims given back, and the pushes that failed.

    `again`: the record may have been written already (a record-only message delivered twice); then nothing
    is written twice. Transitions, invalidations and claims given back are written once by their own
    conditions; receipts are known written when a deployment already points at one of them, or at the
    receipt of a later push."""
    if again and _receipts_recorded(session, record.receipts):
        return Recorded(0, already=True)
    # A device whose token was updated since the dispatch read it keeps its new token valid, and its
    # deployments stay Queued for the dispatch the update enqueued, their wake-up given back. The devices
    # are locked before the deployments, in the order an enrollment and an unenrollment lock them.
    replaced = tokens_replaced(session, used=record.tokens) if record.tokens else []
    if record.lock:
        lock_deployments(session, ids=record.claimed_ids)  # its writes take no row lock after this
    stale_devices = {t.device_id for t in replaced}
    stale = {i for t in replaced for i in t.deployment_ids}
    invalidate_tokens(
        session, invalidations=[i for i in record.invalidations if i.device_id not in stale_devices]
    )
    moved = 0
    for undeliverable in record.undeliverable:
        effects = Effects(error=undeliverable.error)
        ids = [i for i in undeliverable.deployment_ids if i not in stale]
        applied = transition(session, ids=ids, move=UNDELIVERABLE, actor=Actor.worker, effects=effects)
        moved += len(applied.applied)
    if stale:
        give_back_attempts(session, ids=sorted(stale), redeliver_at=None, claimed_at=record.claimed_at)
    record_receipts(session, receipts=record.receipts, repush_at=record.repush_at)
    if record.give_back:
        assert record.redeliver_at is not None
        give_back_attempts(
            session, ids=record.give_back, redeliver_at=record.redeliver_at, claimed_at=record.claimed_at
        )
    record_failed_pushes(session, at=record.claimed_at, failed=record.failed)
    return Recorded(moved)


def _receipts_recorded(session: Session, receipts: Sequence[NewReceipt]) -> bool:
    """Does the first deployment of the first receipt point at a receipt of this push, or of a later one
    (the re-push sweep woke the device again since)? Either way the record is not to be written again: it
    would add its receipts a second time and point the deployments back at this push."""
    if not receipts:
        return False
    first = receipts[0]
    statement = (
        sa.select(RECEIPT.c.id)
        .select_from(DEPLOYMENT.join(RECEIPT, RECEIPT.c.id == DEPLOYMENT.c.receipt_id))
        .where(DEPLOYMENT.c.id == first.deployment_ids[0], RECEIPT.c.sent_at >= first.sent_at)
    )
    return run(session, statement).first() is not None


def _at(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _plain(detail: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return dict(detail) if detail is not None else None
