"""Enrolling devices (one, or a batch of thousands set-based), reading them, and unenrolling them.

Enrolling a device that is there already is Apple's TokenUpdate: the new token and push magic replace the
old, and a token that changed, or a device enrolled again after its unenrollment, is valid again (its
invalidation record and its counted dead-token answers go, through `restore_tokens`). Its deployments that
waited on the old token, or were refused for it, are released for the caller to enqueue.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from models.enums import Actor, Platform, Provider, TokenState
from models.secrets import SecretText
from models.statuses import CANCELLABLE, Status
from models.store._sql import DEPLOYMENT, DEVICE, IDS_PER_STATEMENT, chunked, dialect_of, one_of, run
from models.store.holds import restore_tokens
from models.store.transitions import Effects, ErrorInfo, Move, TransitionResult, transition
from models.tables import Device
from models.types import utcnow

UNENROLLED = ErrorInfo("device_unenrolled", "device unenrolled")
# The errors a dead token leaves on a deployment: a token update sends those deployments again.
TOKEN_ERRORS = ("invalid_token", "push_token_rejected")
_TOKEN_UPDATE = Move.ops_retry_to_queued()
_CANCEL = Move.to(Status.cancelled)
_COPY_COLUMNS = ("id", "organization_id", "platform", "provider", "push_token", "push_magic", "token_state",
                 "topic", "labels", "created_at", "updated_at")  # fmt: skip
_COLUMN_LIST = ", ".join(_COPY_COLUMNS)
# COPY's text format: these four characters are the only ones a field must escape.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_ESCAPED = re.compile(r"[\\\t\n\r]")  # searched first: most fields have none of them


@dataclass(frozen=True)
class Enrollment:
    """A device as its enrollment gives it. `push_magic`, `topic`, `labels` None: the stored ones stay."""

    id: str
    platform: Platform
    provider: Provider
    push_token: str = field(repr=False)
    push_magic: str | None = field(default=None, repr=False)
    topic: str | None = None
    labels: tuple[str, ...] | None = None


class EnrollRefusal(StrEnum):
    topic_change = "topic_change_refused"  # an enrolled Apple device keeps the topic it enrolled with
    id_taken = "device_id_taken"  # the id is a device of another organization
    duplicate = "duplicate_id"  # the batch names this device already


@dataclass(frozen=True)
class Refused:
    index: int
    device_id: str
    reason: EnrollRefusal
    message: str


@dataclass(frozen=True)
class Enrolled:
    created: tuple[str, ...]
    updated: tuple[str, ...]
    refused: tuple[Refused, ...]
    release: tuple[str, ...]  # deployments to enqueue once committed: their device's token was updated


@dataclass(frozen=True)
class _Stored:
    organization_id: str
    topic: str | None
    push_token: str
    push_magic: str | None
    unenrolled: bool


def enroll_devices(
    session: Session,
    *,
    organization_id: str,
    devices: Sequence[Enrollment],
    actor: Actor = Actor.api,
    now: datetime | None = None,
) -> Enrolled:
    """Enroll `devices` (new ones) or update them (TokenUpdate), set-based: one read of the ids, one COPY of
    the new rows on PostgreSQL, one executemany of the updates. A row that cannot be taken is refused with
    its index and reason; the others are stored."""
    now = now or utcnow()
    stored = _stored(session, ids=[d.id for d in devices])
    fresh: list[tuple[int, Enrollment]] = []
    changed: list[tuple[Enrollment, bool]] = []  # and whether the token is made valid again
    refused: list[Refused] = []
    seen: set[str] = set()
    for index, device in enumerate(devices):
        refusal = _refusal(index, device, stored.get(device.id), organization_id, seen)
        seen.add(device.id)
        if refusal is not None:
            refused.append(refusal)
        elif (before := stored.get(device.id)) is None:
            fresh.append((index, device))
        else:
            changed.append((device, _token_updated(device, before)))
    inserted = _insert(session, organization_id, [d for _, d in fresh], now)
    if len(inserted) < len(fresh):
        # Another enrollment inserted some of these ids since they were read: each is this one's update
        # (the same organization's device) or refused, as if it had been there already.
        lost = [(i, d) for i, d in fresh if d.id not in inserted]
        fresh = [(i, d) for i, d in fresh if d.id in inserted]
        there = _stored(session, ids=[d.id for _, d in lost])
        for index, device in lost:
            before = there[device.id]
            refusal = _refusal(index, device, before, organization_id, set())
            if refusal is not None:
                refused.append(refusal)
            else:
                changed.append((device, _token_updated(device, before)))
        refused.sort(key=lambda r: r.index)
    revived = [d.id for d, updated in changed if updated]
    if revived:
        restore_tokens(session, organization_id=organization_id, device_ids=revived)
    _update(session, [d for d, _ in changed], now)
    release = release_for_token_update(session, device_ids=revived, actor=actor, now=now) if revived else []
    return Enrolled(
        tuple(d.id for _, d in fresh), tuple(d.id for d, _ in changed), tuple(refused), tuple(release)
    )


def _refusal(
    index: int, device: Enrollment, before: _Stored | None, organization_id: str, seen: set[str]
) -> Refused | None:
    if device.id in seen:
        return Refused(index, device.id, EnrollRefusal.duplicate, "the batch names this device already")
    if before is None:
        return None
    if before.organization_id != organization_id:
        return Refused(index, device.id, EnrollRefusal.id_taken, "the id is taken: choose another")
    if not before.unenrolled and topic_changes(before.topic, device.topic):
        return Refused(index, device.id, EnrollRefusal.topic_change, topic_change_message(before.topic))
    return None


def topic_changes(stored: str | None, given: str | None) -> bool:
    """Would `given` change an enrolled device's topic? An Apple device keeps the topic it enrolled with:
    its MDM enrollment names it (Apple, "Token Update": the check-in carries the enrollment's Topic), and a
    push under another topic only gets `DeviceTokenNotForTopic` (Apple, "Handling notification responses
    from APNs")."""
    return stored is not None and given is not None and given != stored


def topic_change_message(stored: str | None) -> str:
    return (
        f"the device enrolled with topic {stored} and keeps it; to move it to another topic, unenroll it "
        "(DELETE) and enroll it again"
    )


def _token_updated(device: Enrollment, before: _Stored) -> bool:
    """A new token, new push magic, or an enrollment again after an unenrollment: the token is valid again."""
    magic_changed = device.push_magic is not None and device.push_magic != before.push_magic
    return before.unenrolled or device.push_token != before.push_token or magic_changed


def _stored(session: Session, *, ids: Sequence[str]) -> dict[str, _Stored]:
    """The devices of `ids` there already, locked till the end of the transaction on PostgreSQL."""
    c = DEVICE.c
    found: dict[str, _Stored] = {}
    for batch in chunked(sorted(set(ids)), IDS_PER_STATEMENT):
        statement = sa.select(
            c.id, c.organization_id, c.topic, c.push_token, c.push_magic, c.unenrolled_at
        ).where(one_of(session, c.id, batch))
        if dialect_of(session) == "postgresql":
            statement = statement.order_by(c.id).with_for_update()
        for r in run(session, statement):
            found[r.id] = _Stored(
                r.organization_id, r.topic, r.push_token, r.push_magic, r.unenrolled_at is not None
            )
    return found


def _insert(session: Session, organization_id: str, devices: Sequence[Enrollment], now: datetime) -> set[str]:
    """Insert the devices whose ids no other enrollment has inserted since they were read (on PostgreSQL, a
    COPY into a scratch table, then one INSERT from it that skips those ids); returns the ids inserted."""
    if not devices:
        return set()
    if dialect_of(session) == "postgresql":
        run(session, sa.text(_INSERT_SCRATCH))
        _copy(session, _copy_lines(session, organization_id, devices, now), table="device_insert")
        inserted = set(run(session, sa.text(_INSERT_FROM_SCRATCH)).scalars())
        run(session, sa.text("DROP TABLE device_insert"))
        return inserted
    rows = [_row(organization_id, d, now) for d in devices]
    statement = (
        sqlite.insert(DEVICE).on_conflict_do_nothing(index_elements=[DEVICE.c.id]).returning(DEVICE.c.id)
    )
    return {
        i
        for batch in chunked(rows, IDS_PER_STATEMENT)
        for i in run(session, statement, list(batch)).scalars()
    }


_INSERT_SCRATCH = (
    f"CREATE TEMPORARY TABLE device_insert ON COMMIT DROP AS SELECT {_COLUMN_LIST} FROM device WITH NO DATA"  # noqa: S608  (column names of this module)
)
# An id another transaction inserted meanwhile waits for it, then is skipped once it commits.
_INSERT_FROM_SCRATCH = f"""
INSERT INTO device ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM device_insert ORDER BY id
ON CONFLICT (id) DO NOTHING RETURNING id
"""  # noqa: S608  (column names of this module)


def _row(organization_id: str, d: Enrollment, now: datetime) -> dict[str, Any]:
    return {
        "id": d.id,
        "organization_id": organization_id,
        "platform": d.platform.value,
        "provider": d.provider.value,
        "push_token": d.push_token,
        "push_magic": d.push_magic,
        "token_state": TokenState.valid.value,
        "topic": d.topic,
        "labels": list(d.labels) if d.labels is not None else None,
        "created_at": now,
        "updated_at": now,
    }


def _copy_lines(
    session: Session, organization_id: str, devices: Sequence[Enrollment], now: datetime
) -> Iterator[str]:
    # COPY passes by the column types: push magic is sealed here by its column's own type.
    dialect = session.get_bind().dialect
    magic_type = DEVICE.c.push_magic.type
    assert isinstance(magic_type, SecretText)
    seal = magic_type.process_bind_param
    organization = organization_id.translate(_COPY_ESCAPES)
    at = now.isoformat()
    for d in devices:
        magic = seal(d.push_magic, dialect)
        fields = (
            _text(d.id),
            organization,
            d.platform.value,
            d.provider.value,
            _text(d.push_token),
            _text(magic),
            TokenState.valid.value,
            _text(d.topic),
            _text(None if d.labels is None else json.dumps(list(d.labels), ensure_ascii=False)),
            at,
            at,
        )
        yield "\t".join(fields) + "\n"


def _text(value: str | None) -> str:
    if value is None:
        return "\\N"
    return value.translate(_COPY_ESCAPES) if _ESCAPED.search(value) else value


def _copy(session: Session, lines: Iterator[str], *, table: str = "device") -> None:
    driver = session.connection().connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(f"COPY {table} ({_COLUMN_LIST}) FROM STDIN") as copy:
        block: list[str] = []
        for line in lines:
            block.append(line)
            if len(block) == 2_000:
                copy.write("".join(block))
                block.clear()
        if block:
            copy.write("".join(block))


_UPDATE = (
    sa.update(DEVICE)
    .where(DEVICE.c.id == sa.bindparam("b_id"))
    .values(
        platform=sa.bindparam("b_platform"),
        provider=sa.bindparam("b_provider"),
        push_token=sa.bindparam("b_token"),
        push_magic=sa.func.coalesce(
            sa.bindparam("b_magic", type_=DEVICE.c.push_magic.type), DEVICE.c.push_magic
        ),
        topic=sa.func.coalesce(sa.bindparam("b_topic", type_=DEVICE.c.topic.type), DEVICE.c.topic),
        labels=sa.case(
            (sa.bindparam("b_keep_labels", type_=sa.Boolean), DEVICE.c.labels),
            else_=sa.bindparam("b_labels", type_=DEVICE.c.labels.type),
        ),
        updated_at=sa.bindparam("b_now", type_=DEVICE.c.updated_at.type),
        unenrolled_at=None,
    )
)


def _update(session: Session, devices: Sequence[Enrollment], now: datetime) -> None:
    """Write the updates: on PostgreSQL one COPY into a scratch table and one UPDATE from it; elsewhere an
    executemany. A field the enrollment leaves out (None) keeps its stored value."""
    if not devices:
        return
    ordered = sorted(devices, key=lambda d: d.id)  # row locks in id order
    if dialect_of(session) == "postgresql":
        run(session, sa.text(_SCRATCH))
        _copy(session, _copy_lines(session, "", ordered, now), table="device_update")
        run(session, sa.text(_UPDATE_FROM_SCRATCH))
        run(session, sa.text("DROP TABLE device_update"))
        return
    params = [
        {
            "b_id": d.id,
            "b_platform": d.platform.value,
            "b_provider": d.provider.value,
            "b_token": d.push_token,
            "b_magic": d.push_magic,
            "b_topic": d.topic,
            "b_keep_labels": d.labels is None,
            "b_labels": list(d.labels) if d.labels is not None else None,
            "b_now": now,
        }
        for d in ordered
    ]
    run(session, _UPDATE, params)


_SCRATCH = (
    f"CREATE TEMPORARY TABLE device_update ON COMMIT DROP AS SELECT {_COLUMN_LIST} FROM device WITH NO DATA"  # noqa: S608  (column names of this module)
)
# `push_magic` comes sealed (or NULL: keep it), `labels` NULL when not given: the stored ones stay.
_UPDATE_FROM_SCRATCH = """
UPDATE device SET platform = u.platform, provider = u.provider, push_token = u.push_token,
    push_magic = coalesce(u.push_magic, device.push_magic), topic = coalesce(u.topic, device.topic),
    labels = coalesce(u.labels, device.labels), updated_at = u.updated_at, unenrolled_at = NULL
FROM device_update AS u WHERE device.id = u.id
"""


def release_for_token_update(
    session: Session, *, device_ids: Sequence[str], actor: Actor, now: datetime
) -> list[str]:
    """The deployments of these devices that waited on their old token, sent again: the Queued ones, and
    those that ended `Error distributing` because the token was dead, back to Queued with an event. Returns
    their ids for the caller to enqueue once committed. A held one stays held: a hold is the organization's
    credential's, configuration's or topic's (a dead token holds nothing), and its release sends it."""
    c = DEPLOYMENT.c
    refused: list[str] = []
    for batch in chunked(sorted(device_ids), IDS_PER_STATEMENT):
        statement = sa.select(c.id).where(
            one_of(session, c.device_id, batch),
            c.status == Status.error_distributing.value,
            c.error_code.in_(TOKEN_ERRORS),
        )
        refused += run(session, statement).scalars()
    effects = Effects(detail={"why": "token update"})
    transition(session, ids=refused, move=_TOKEN_UPDATE, actor=actor, effects=effects, now=now)
    queued: list[str] = []
    for batch in chunked(sorted(device_ids), IDS_PER_STATEMENT):
        release = (
            sa.update(DEPLOYMENT)
            .where(
                one_of(session, c.device_id, batch),
                c.status == Status.queued.value,
                c.hold_reason.is_(None),
            )
            .values(enqueued_at=None, next_attempt_at=None, updated_at=now)
            .returning(c.id)
        )
        queued += run(session, release).scalars()
    return sorted(queued)


# -- unenroll ---------------------------------------------------------------------------------------------


def unenroll_device(
    session: Session, *, organization_id: str, device_id: str, now: datetime | None = None
) -> TransitionResult | None:
    """Unenroll the device (a soft delete: the row stays) and cancel its deployments it has not started,
    with the error "device unenrolled"; started ones run to their own end. None: no such device of the
    organization. Unenrolling twice cancels what is left and keeps the first time."""
    now = now or utcnow()
    statement = (
        sa.update(DEVICE)
        .where(DEVICE.c.id == device_id, DEVICE.c.organization_id == organization_id)
        .values(unenrolled_at=sa.func.coalesce(DEVICE.c.unenrolled_at, now), updated_at=now)
    )
    if not run(session, statement).rowcount:
        return None
    return cancel_unstarted(session, device_ids=[device_id], actor=Actor.api, now=now)


def cancel_unstarted(
    session: Session, *, device_ids: Sequence[str], actor: Actor, now: datetime | None = None
) -> TransitionResult:
    """Cancel the deployments of these (unenrolled) devices that the device has not started."""
    c = DEPLOYMENT.c
    cancellable = sorted({status.value for statuses in CANCELLABLE.values() for status in statuses})
    ids: list[str] = []
    for batch in chunked(sorted(set(device_ids)), IDS_PER_STATEMENT):
        statement = sa.select(c.id).where(one_of(session, c.device_id, batch), c.status.in_(cancellable))
        ids += run(session, statement).scalars()
    return cancel_for_unenrolled(session, ids=ids, actor=actor, now=now)


def cancel_for_unenrolled(
    session: Session, *, ids: Sequence[str], actor: Actor, now: datetime | None = None
) -> TransitionResult:
    """Cancel these deployments where the device has not started them: their device was unenrolled."""
    effects = Effects(error=UNENROLLED)
    return transition(session, ids=ids, move=_CANCEL, actor=actor, effects=effects, now=now)


# -- reads ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceFilter:
    """Every field optional. `enrolled`: True the enrolled only, False the unenrolled only, None both."""

    platform: Platform | None = None
    provider: Provider | None = None
    token_state: TokenState | None = None
    label: str | None = None
    enrolled: bool | None = True


def get_device(session: Session, *, organization_id: str, device_id: str) -> Device | None:
    """The organization's device (enrolled or not); None for another organization's, as for a missing one."""
    device = session.get(Device, device_id)
    return device if device is not None and device.organization_id == organization_id else None


def list_devices(
    session: Session, *, organization_id: str, where: DeviceFilter, after: str | None, limit: int
) -> list[Device]:
    """One page in id order, those past the cursor `after`."""
    statement = select(Device).where(Device.organization_id == organization_id)
    if where.platform is not None:
        statement = statement.where(Device.platform == where.platform)
    if where.provider is not None:
        statement = statement.where(Device.provider == where.provider)
    if where.token_state is not None:
        statement = statement.where(Device.token_state == where.token_state)
    if where.enrolled is not None:
        unenrolled = col(Device.unenrolled_at)
        statement = statement.where(unenrolled.is_(None) if where.enrolled else unenrolled.is_not(None))
    if where.label is not None:
        statement = statement.where(_has_label(session, where.label))
    if after is not None:
        statement = statement.where(col(Device.id) > after)
    return list(session.exec(statement.order_by(col(Device.id)).limit(limit)))


def _has_label(session: Session, label: str) -> sa.ColumnElement[bool]:
    labels = DEVICE.c.labels
    if dialect_of(session) == "postgresql":
        return labels.op("@>")(sa.bindparam(None, [label], type_=postgresql.JSONB))
    each = sa.func.json_each(labels).table_valued("value")
    return sa.exists(sa.select(each.c.value).where(each.c.value == label))


def last_pushes(session: Session, *, device_ids: Sequence[str]) -> dict[str, datetime]:
    """When each device was last pushed for (the latest `pushed_at` of its deployments), where it was."""
    c = DEPLOYMENT.c
    found: dict[str, datetime] = {}
    for batch in chunked(sorted(set(device_ids)), IDS_PER_STATEMENT):
        statement = (
            sa.select(c.device_id, sa.func.max(c.pushed_at).label("at"))
            .where(one_of(session, c.device_id, batch), c.pushed_at.is_not(None))
            .group_by(c.device_id)
        )
        found |= {r.device_id: r.at for r in run(session, statement)}
    return found


def record_devices_seen(session: Session, *, seen: Sequence[tuple[str, datetime]]) -> None:
    """Note when each device last reported (its `last_seen_at`), never moving it back."""
    latest: dict[str, datetime] = {}
    for device_id, at in seen:
        latest[device_id] = max(at, latest.get(device_id, at))
    if not latest:
        return
    c = DEVICE.c
    statement = (
        sa.update(DEVICE)
        .where(
            c.id == sa.bindparam("b_id"),
            sa.or_(
                c.last_seen_at.is_(None), c.last_seen_at < sa.bindparam("b_at", type_=c.last_seen_at.type)
            ),
        )
        .values(last_seen_at=sa.bindparam("b_at", type_=c.last_seen_at.type))
    )
    run(session, statement, [{"b_id": i, "b_at": at} for i, at in sorted(latest.items())])
