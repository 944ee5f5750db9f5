"""Deployments: bulk creation and reads."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from config.errors import MdmqError
from models.ids import is_id, new_ids
from models.statuses import Kind, Status
from models.store._sql import DEPLOYMENT, IDS_PER_STATEMENT, chunked, dialect_of, one_of, run
from models.store.devices import unknown_device_ids
from models.store.maintenance import STUCK_IN
from models.tables import Deployment, DeploymentEvent
from models.types import utcnow

_COLUMNS = ("id", "organization_id", "device_id", "kind", "payload", "urgent", "status",
            "attempt_count", "postpone_count", "created_at", "updated_at", "enqueued_at",
            "next_attempt_at", "rollout_id")  # fmt: skip
_COPY = f"COPY deployment ({', '.join(_COLUMNS)}) FROM STDIN"
# COPY's text format: these four characters are the only ones a field must escape.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
SelectT = TypeVar("SelectT", bound=SelectOfScalar[Any])  # a SELECT of deployments, or of their count


@dataclass(frozen=True)
class NewDeployment:
    device_id: str
    kind: Kind
    payload: Mapping[str, Any] = field(default_factory=dict)
    urgent: bool = False


class UnknownDevices(MdmqError, LookupError):
    """Some device ids are not devices of this organization; nothing was created."""

    def __init__(self, device_ids: Sequence[str]) -> None:
        self.device_ids = list(device_ids)
        shown = ", ".join(self.device_ids[:10]) + (" ..." if len(self.device_ids) > 10 else "")
        super().__init__(f"{len(self.device_ids)} unknown device id(s): {shown}")


def create_deployments(
    session: Session,
    *,
    organization_id: str,
    deployments: Sequence[NewDeployment],
    batch_size: int = 5_000,
    now: datetime | None = None,
    redeliver_after_s: float | None = None,
    rollout_id: str | None = None,
) -> list[str]:
    """Insert `deployments` as Queued and return their ids, in order; with `rollout_id`, as that rollout's
    (`create_rollout`, in the same transaction).

    All or nothing: if a device id is not a device of this organization, nothing is written and
    `UnknownDevices` names them all. PostgreSQL gets one COPY; SQLite multi-row INSERTs of `batch_size`
    rows. Enqueueing them is the caller's job, after commit.

    With `redeliver_after_s`, for a caller that enqueues them as soon as they are committed (`Actors.create`),
    they are written as enqueued already: `enqueued_at` now, and a re-push time `redeliver_after_s` ahead, as
    `mark_enqueued` would set once their messages were sent, without a second write of every row. A crash
    between the commit and the enqueue is then caught by the re-push sweep at the re-push time, not by the
    relay.
    """
    _check_devices(session, organization_id, deployments)
    now = now or utcnow()
    enqueued = None if redeliver_after_s is None else (now, now + timedelta(seconds=redeliver_after_s))
    ids = new_ids(len(deployments))
    if dialect_of(session) == "postgresql":
        _copy(session, _copy_lines(organization_id, ids, deployments, now, enqueued, rollout_id=rollout_id))
        _refresh_statistics_if_stale(session, added=len(ids))
    else:
        rows = _rows(organization_id, ids, deployments, now, enqueued, rollout_id=rollout_id)
        for part in chunked(rows, batch_size):
            run(session, sa.insert(DEPLOYMENT), list(part))
    return ids


def _check_devices(session: Session, organization_id: str, deployments: Sequence[NewDeployment]) -> None:
    wanted = {d.device_id for d in deployments}
    # A malformed id cannot be a device; checking the pattern also keeps the COPY text free of escapes.
    malformed = {device_id for device_id in wanted if not is_id(device_id)}
    unknown = malformed | unknown_device_ids(session, organization_id=organization_id, ids=wanted - malformed)
    if unknown:
        raise UnknownDevices(sorted(unknown))


def _refresh_statistics_if_stale(session: Session, *, added: int) -> None:
    """ANALYZE the deployment table when its statistics count fewer rows than one creation just added.

    Until autovacuum analyzes it (a minute or more later) the planner takes a freshly filled table for a
    near-empty one and plans each dispatch's claim as a sequential scan. A table whose statistics are of its
    size is not touched."""
    known = run(
        session, sa.text("SELECT reltuples FROM pg_class WHERE oid = 'deployment'::regclass")
    ).scalar()
    if known is None or known < added:
        run(session, sa.text("ANALYZE deployment"))


def _copy_lines(
    organization_id: str,
    ids: list[str],
    deployments: Sequence[NewDeployment],
    now: datetime,
    enqueued: tuple[datetime, datetime] | None,
    *,
    rollout_id: str | None,
) -> Iterator[str]:
    # Formatted here, cheaper than psycopg's write_row: every field but the payload is generated or
    # pattern-checked, and each distinct payload object is encoded once.
    organization = organization_id.translate(_COPY_ESCAPES)
    created = now.isoformat()
    enqueued_at, repush_at = (t.isoformat() for t in enqueued) if enqueued else ("\\N", "\\N")  # \N: NULL
    rollout = rollout_id or "\\N"  # an id: pattern-checked, nothing to escape
    fields = ("", Status.queued.value, "0", "0", created, created, enqueued_at, repush_at, rollout)
    tail = "\t".join(fields) + "\n"
    kinds = {kind: kind.value for kind in Kind}
    encoded: dict[int, str] = {}
    for deployment_id, d in zip(ids, deployments, strict=True):
        payload = encoded.get(id(d.payload))
        if payload is None:
            payload = encoded[id(d.payload)] = _json(d.payload).translate(_COPY_ESCAPES)
        urgent = "t" if d.urgent else "f"
        yield f"{deployment_id}\t{organization}\t{d.device_id}\t{kinds[d.kind]}\t{payload}\t{urgent}{tail}"


def _copy(session: Session, lines: Iterator[str]) -> None:
    driver = session.connection().connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(_COPY) as copy:
        for block in _blocks(lines, 2_000):
            copy.write(block)


def _blocks(lines: Iterator[str], size: int) -> Iterator[str]:
    block: list[str] = []
    for line in lines:
        block.append(line)
        if len(block) == size:
            yield "".join(block)
            block.clear()
    if block:
        yield "".join(block)


def _rows(
    organization_id: str,
    ids: list[str],
    deployments: Sequence[NewDeployment],
    now: datetime,
    enqueued: tuple[datetime, datetime] | None,
    *,
    rollout_id: str | None,
) -> list[dict[str, Any]]:
    enqueued_at, repush_at = enqueued or (None, None)
    return [
        {
            "id": deployment_id,
            "organization_id": organization_id,
            "device_id": d.device_id,
            "kind": d.kind,
            "payload": dict(d.payload),
            "urgent": d.urgent,
            "status": Status.queued,
            "attempt_count": 0,
            "postpone_count": 0,
            "created_at": now,
            "updated_at": now,
            "enqueued_at": enqueued_at,
            "next_attempt_at": repush_at,
            "rollout_id": rollout_id,
        }
        for deployment_id, d in zip(ids, deployments, strict=True)
    ]


def _json(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def get_deployment(session: Session, *, deployment_id: str) -> Deployment | None:
    return session.get(Deployment, deployment_id)


def deployment_history(session: Session, *, deployment_id: str) -> list[DeploymentEvent]:
    """The deployment's transitions, oldest first (its creation is its `created_at`)."""
    statement = (
        select(DeploymentEvent)
        .where(DeploymentEvent.deployment_id == deployment_id)
        .order_by(col(DeploymentEvent.id))
    )
    return list(session.exec(statement))


def deployment_devices(session: Session, *, organization_id: str, ids: Sequence[str]) -> dict[str, str]:
    """The device of each of `ids` that is this organization's deployment; another organization's deployment
    is left out, as a missing one is."""
    c = DEPLOYMENT.c
    devices: dict[str, str] = {}
    for batch in chunked(sorted(set(ids)), IDS_PER_STATEMENT):
        statement = sa.select(c.id, c.device_id).where(
            one_of(session, c.id, batch), c.organization_id == organization_id
        )
        devices |= {row.id: row.device_id for row in run(session, statement)}
    return devices


def pending_commands(session: Session, *, device_id: str) -> list[tuple[str, Kind]]:
    """What the check-in server hands a device that connects: its Queued deployments, held ones too. A hold
    stops the pushes that wake a device, not what a device that checks in anyway (woken by an earlier push,
    or on its own) fetches; the fetch moves the deployment on and ends its hold."""
    statement = sa.select(DEPLOYMENT.c.id, DEPLOYMENT.c.kind).where(
        DEPLOYMENT.c.device_id == device_id, DEPLOYMENT.c.status == Status.queued.value
    )
    return [(row.id, Kind(row.kind)) for row in run(session, statement)]


def rollout_state(session: Session, *, organization_id: str) -> list[tuple[str, str, Kind, Status]]:
    """(id, device, kind, status) of every deployment of the organization, for the demo's progress."""
    c = DEPLOYMENT.c
    statement = sa.select(c.id, c.device_id, c.kind, c.status).where(c.organization_id == organization_id)
    return [(r.id, r.device_id, Kind(r.kind), Status(r.status)) for r in run(session, statement)]


def error_examples(session: Session, *, organization_id: str, limit: int = 5) -> list[tuple[str, str, int]]:
    """The commonest error messages of the organization's deployments: (status, message, count)."""
    c = DEPLOYMENT.c
    count = sa.func.count().label("n")
    statement = (
        sa.select(c.status, c.error_message, count)
        .where(c.organization_id == organization_id, c.error_message.is_not(None))
        .group_by(c.status, c.error_message)
        .order_by(count.desc())
        .limit(limit)
    )
    return [(r.status, r.error_message, r.n) for r in run(session, statement)]


@dataclass(frozen=True)
class DeploymentFilter:
    """What an operator asks for: every field optional; `stuck_since` keeps the deployments unchanged since
    then in a status where nothing moves them on their own."""

    kind: Kind | None = None
    status: Status | None = None
    device_id: str | None = None
    held: bool | None = None
    stuck_since: datetime | None = None


def list_deployments(
    session: Session,
    *,
    organization_id: str | None,
    where: DeploymentFilter,
    after: str | None,
    limit: int,
    newest_first: bool = False,
) -> list[Deployment]:
    """One page in id order (ids sort by creation time), or newest first: those past the cursor `after`.
    `organization_id` None: every organization's (the ops command line)."""
    statement = _matching(select(Deployment), organization_id, where)
    ids = col(Deployment.id)
    if after is not None:
        statement = statement.where(ids < after if newest_first else ids > after)
    return list(session.exec(statement.order_by(ids.desc() if newest_first else ids).limit(limit)))


def count_deployments(session: Session, *, organization_id: str | None, where: DeploymentFilter) -> int:
    """How many deployments `list_deployments` pages through with the same filter: the listing's total."""
    statement = _matching(select(sa.func.count()).select_from(Deployment), organization_id, where)
    return int(session.exec(statement).one())


def _matching(statement: SelectT, organization_id: str | None, where: DeploymentFilter) -> SelectT:
    if organization_id is not None:
        statement = statement.where(Deployment.organization_id == organization_id)
    if where.kind is not None:
        statement = statement.where(Deployment.kind == where.kind)
    if where.status is not None:
        statement = statement.where(Deployment.status == where.status)
    if where.device_id is not None:
        statement = statement.where(Deployment.device_id == where.device_id)
    if where.held is not None:
        held = col(Deployment.hold_reason)
        statement = statement.where(held.is_not(None) if where.held else held.is_(None))
    if where.stuck_since is not None:
        stuck = sa.or_(
            *(
                sa.and_(col(Deployment.kind) == kind, col(Deployment.status).in_(statuses))
                for kind, statuses in STUCK_IN.items()
            )
        )
        statement = statement.where(stuck, col(Deployment.updated_at) < where.stuck_since)
    return statement
