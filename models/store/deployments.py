"""Deployments: bulk creation and reads."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from models.enums import Actor
from models.ids import new_ids
from models.statuses import Kind, Status
from models.store._sql import DEPLOYMENT, EVENT, chunked, dialect_of, run
from models.store.devices import existing_device_ids
from models.tables import Deployment, DeploymentEvent
from models.types import utcnow

_DEPLOYMENT_COLUMNS = (
    "id", "organization_id", "device_id", "kind", "payload", "urgent", "status",
    "attempt_count", "postpone_count", "created_at", "updated_at",
)  # fmt: skip
_EVENT_COLUMNS = ("deployment_id", "from_status", "to_status", "at", "actor")


@dataclass(frozen=True)
class NewDeployment:
    device_id: str
    kind: Kind
    payload: Mapping[str, Any] = field(default_factory=dict)
    urgent: bool = False


class UnknownDevices(LookupError):
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
    actor: Actor = Actor.api,
    batch_size: int = 5_000,
    now: datetime | None = None,
) -> list[str]:
    """Insert `deployments` as Queued, each with its creation event, and return their ids in order.

    All or nothing: one unknown device and nothing is written (`UnknownDevices`). PostgreSQL gets COPY;
    SQLite multi-row INSERTs of `batch_size` rows. Enqueueing them is the caller's job, after commit.
    """
    device_ids = {d.device_id for d in deployments}
    unknown = device_ids - existing_device_ids(session, organization_id=organization_id, ids=device_ids)
    if unknown:
        raise UnknownDevices(sorted(unknown))
    now = now or utcnow()
    ids = new_ids(len(deployments))
    postgresql = dialect_of(session) == "postgresql"
    rows = list(_deployment_rows(organization_id, ids, deployments, now, encode_json=postgresql))
    events = [(i, None, Status.queued.value, now, actor.value) for i in ids]
    if postgresql:
        _copy(session, "deployment", _DEPLOYMENT_COLUMNS, rows)
        _copy(session, "deployment_event", _EVENT_COLUMNS, events)
    else:
        _insert(session, DEPLOYMENT, _DEPLOYMENT_COLUMNS, rows, batch_size)
        _insert(session, EVENT, _EVENT_COLUMNS, events, batch_size)
    return ids


def _deployment_rows(
    organization_id: str,
    ids: list[str],
    deployments: Sequence[NewDeployment],
    now: datetime,
    *,
    encode_json: bool,
) -> Iterator[tuple[Any, ...]]:
    # A rollout sends one payload to many devices: COPY serializes each distinct payload object once.
    encoded: dict[int, Any] = {}
    for deployment_id, d in zip(ids, deployments, strict=True):
        payload = encoded.get(id(d.payload))
        if payload is None:
            payload = json.dumps(d.payload, separators=(",", ":")) if encode_json else dict(d.payload)
            encoded[id(d.payload)] = payload
        yield (deployment_id, organization_id, d.device_id, d.kind.value, payload, d.urgent,
               Status.queued.value, 0, 0, now, now)  # fmt: skip


def _copy(session: Session, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
    driver = session.connection().connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _insert(
    session: Session, table: sa.Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]], batch: int
) -> None:
    for part in chunked(rows, batch):
        params = [dict(zip(columns, row, strict=True)) for row in part]
        run(session, sa.insert(table), params)


def get_deployment(session: Session, *, deployment_id: str) -> Deployment | None:
    return session.get(Deployment, deployment_id)


def deployment_history(session: Session, *, deployment_id: str) -> list[DeploymentEvent]:
    statement = (
        select(DeploymentEvent)
        .where(DeploymentEvent.deployment_id == deployment_id)
        .order_by(col(DeploymentEvent.id))
    )
    return list(session.exec(statement))
