"""Recording a chunk's receipts: each deployment points at the receipt of the push that woke its device, on
both databases, and on PostgreSQL while other transactions take ids from the same sequence."""

from __future__ import annotations

import random
import threading
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from models.enums import Provider
from models.statuses import Kind, Status
from models.store.dispatch import NewReceipt, record_receipts
from models.tables import Deployment, PushReceipt
from models.types import utcnow
from tests.conftest import MakeDeployments


def _receipts(ids: list[str], seed: int, tag: str) -> list[NewReceipt]:
    """Receipts of one to four deployments each, in a shuffled order, each push named after its tag."""
    shuffled = random.Random(seed).sample(ids, len(ids))
    receipts, at = [], 0
    now = utcnow()
    while at < len(shuffled):
        size = random.Random(seed + at).randint(1, 4)
        group = shuffled[at : at + size]
        provider = (Provider.apns, Provider.fcm, Provider.aosp)[at % 3]
        receipts.append(NewReceipt("acme", provider, f"{tag}-{at}", group, len(group), now, None))
        at += size
    return receipts


def _record(engine: Engine, receipts: list[NewReceipt]) -> None:
    repush = {d: utcnow() + timedelta(minutes=5) for r in receipts for d in r.deployment_ids}
    with Session(engine) as session, session.begin():
        record_receipts(session, receipts=receipts, repush_at=repush)


def _pointed_at(engine: Engine, ids: list[str]) -> dict[str, tuple[str | None, int]]:
    with Session(engine) as session:
        rows = session.exec(
            select(Deployment.id, PushReceipt.provider_push_id, PushReceipt.device_count)
            .join(PushReceipt, col(PushReceipt.id) == col(Deployment.receipt_id))
            .where(col(Deployment.id).in_(ids))
        ).all()
    return {deployment: (push, count) for deployment, push, count in rows}


def _expected(receipts: list[NewReceipt]) -> dict[str, tuple[str | None, int]]:
    return {d: (r.provider_push_id, r.device_count) for r in receipts for d in r.deployment_ids}


def test_each_deployment_points_at_the_receipt_of_its_own_push(
    engine: Engine, make_deployments: MakeDeployments
) -> None:
    ids = make_deployments(engine, Kind.profile, 300)
    receipts = _receipts(ids, seed=1, tag="push")

    _record(engine, receipts)

    assert _pointed_at(engine, ids) == _expected(receipts)


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_receipts_recorded_side_by_side_take_their_own_ids(
    engine: Engine, make_deployments: MakeDeployments
) -> None:
    ids = make_deployments(engine, Kind.profile, 1_200)
    chunks = [ids[i : i + 150] for i in range(0, len(ids), 150)]
    batches = [_receipts(chunk, seed=n, tag=f"chunk{n}") for n, chunk in enumerate(chunks)]
    start = threading.Barrier(len(batches))
    errors: list[BaseException] = []

    def record(receipts: list[NewReceipt]) -> None:
        try:
            start.wait()
            _record(engine, receipts)
        except BaseException as e:  # reported below, with the assertion
            errors.append(e)

    threads = [threading.Thread(target=record, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert _pointed_at(engine, ids) == {k: v for batch in batches for k, v in _expected(batch).items()}


def test_a_queued_deployment_gets_its_re_push_time_and_one_that_answered_keeps_its_own(
    engine: Engine, make_deployments: MakeDeployments
) -> None:
    """The device may answer before the push's answer is recorded: a NotNow's retry time must stand."""
    waiting, postponed = make_deployments(engine, Kind.profile, 2)
    own_retry = utcnow() + timedelta(hours=2)
    with Session(engine) as session, session.begin():
        row = session.get(Deployment, postponed)
        assert row is not None
        row.status, row.next_attempt_at = Status.postponed, own_retry
    repush = utcnow() + timedelta(minutes=5)
    receipt = NewReceipt("acme", Provider.apns, "push-1", [waiting, postponed], 1, utcnow(), None)
    with Session(engine) as session, session.begin():
        record_receipts(session, receipts=[receipt], repush_at={waiting: repush, postponed: repush})

    with Session(engine) as session:
        rows = {d.id: d for d in session.exec(select(Deployment))}
    assert rows[waiting].next_attempt_at == repush
    assert rows[postponed].next_attempt_at == own_retry
    assert rows[waiting].receipt_id == rows[postponed].receipt_id is not None
