"""Property: any sequence of device reports — duplicated, reordered, misdirected — leaves a deployment in a
status of its own kind, writes an event for every change and none for a refusal, and never leaves a terminal
status or goes back to Queued."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

from models.database import create_engine
from models.enums import Actor, Platform
from models.reports import ALIASES, TARGETS, Report, parse_report
from models.statuses import STATUSES, TERMINAL, Kind, Status
from models.store import (
    Move,
    NewDeployment,
    create_deployments,
    deployment_history,
    ensure_organization,
    get_deployment,
    transition,
)
from models.store.devices import NewDevice, add_devices
from models.types import utcnow
from tests.helpers import status_of
from workers.policy import RetryPolicy
from workers.services.reports import DeviceReport, record_device_report, record_device_reports

POLICY = RetryPolicy.defaults()

RAW_REPORTS = [r.value for r in Report] + list(ALIASES)


@st.composite
def report_sequences(draw: st.DrawFn) -> tuple[Kind, list[str]]:
    """A kind, and reports for it: its own reports duplicated and shuffled, with foreign ones mixed in."""
    kind = draw(st.sampled_from(list(Kind)))
    own = [r.value for r in TARGETS[kind]]
    lifecycle = draw(st.lists(st.sampled_from(own), min_size=1, max_size=12))
    duplicated = lifecycle + draw(st.lists(st.sampled_from(lifecycle), max_size=6))
    noise = draw(st.lists(st.sampled_from(RAW_REPORTS), max_size=6))
    return kind, draw(st.permutations(duplicated + noise))


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session, session.begin():
        ensure_organization(session, organization_id="acme")
        add_devices(session, organization_id="acme", devices=[NewDevice(Platform.ios, "t", id="d" * 24)])
    yield engine
    engine.dispose()


@settings(max_examples=300, deadline=None)
@given(sequence=report_sequences())
def test_any_sequence_of_reports_keeps_the_deployment_consistent(
    engine: Engine, sequence: tuple[Kind, list[str]]
) -> None:
    kind, reports = sequence
    with Session(engine) as session, session.begin():
        [deployment_id] = create_deployments(
            session, organization_id="acme", deployments=[NewDeployment("d" * 24, kind)]
        )

    changes = 0
    for raw in reports:
        before = status_of(engine, deployment_id)
        with Session(engine) as session, session.begin():
            move = Move.for_report(parse_report(raw))
            result = transition(session, ids=[deployment_id], move=move, actor=Actor.device)
        after = status_of(engine, deployment_id)

        assert after in STATUSES[kind]
        assert len(result.applied) + len(result.refused) == 1
        if result.applied:
            changes += 1
            assert after != before
            assert before not in TERMINAL[kind], f"{kind} left terminal {before} for {after}"
            assert after is not Status.queued, "a device report never moves a deployment back to Queued"
        else:
            assert after == before

    with Session(engine) as session:
        history = deployment_history(session, deployment_id=deployment_id)
    assert len(history) == changes, "one event per change and none for a refusal"
    chain = [(Status.queued, Status.queued)] + [(e.from_status, e.to_status) for e in history]
    for (_, previous_to), (following_from, _) in itertools.pairwise(chain):
        assert following_from == previous_to, "the history is one unbroken chain from Queued"
    assert chain[-1][1] == status_of(engine, deployment_id)


@st.composite
def check_ins(draw: st.DrawFn) -> list[tuple[int, str, str | None]]:
    """Reports for four deployments (one per kind), interleaved as a check-in sends them: (which, report,
    reason), NotNow and agent-not-started included, duplicates and foreign reports mixed in."""
    reports = []
    for which, kind in enumerate(Kind):
        own = [r.value for r in TARGETS[kind]]
        for raw in draw(st.lists(st.sampled_from(own + RAW_REPORTS[:3]), max_size=6)):
            reports.append((which, raw, draw(st.sampled_from([None, "busy", "device locked"]))))
    return draw(st.permutations(reports))


def _fresh(engine: Engine) -> list[str]:
    with Session(engine) as session, session.begin():
        return create_deployments(
            session, organization_id="acme", deployments=[NewDeployment("d" * 24, kind) for kind in Kind]
        )


def _outcome(engine: Engine, ids: list[str]) -> list[tuple[object, ...]]:
    with Session(engine) as session:
        outcome: list[tuple[object, ...]] = []
        for deployment_id in ids:
            d = get_deployment(session, deployment_id=deployment_id)
            assert d is not None
            # The retry time has jitter: compare everything else.
            events = [
                (
                    e.from_status,
                    e.to_status,
                    {k: v for k, v in (e.detail or {}).items() if k != "next_attempt_at"},
                )
                for e in deployment_history(session, deployment_id=d.id)
            ]
            outcome.append((d.status, d.postpone_count, d.error_code, d.last_device_reason, events))
        return outcome


@settings(max_examples=150, deadline=None)
@given(reports=check_ins())
def test_a_check_in_recorded_at_once_ends_as_its_reports_one_by_one(
    engine: Engine, reports: list[tuple[int, str, str | None]]
) -> None:
    now = utcnow()
    one_by_one, at_once = _fresh(engine), _fresh(engine)
    for which, raw, reason in reports:
        with Session(engine) as session, session.begin():
            report = DeviceReport(one_by_one[which], parse_report(raw), reason)
            record_device_report(session, report, policy=POLICY, now=now)
    with Session(engine) as session, session.begin():
        batch = [DeviceReport(at_once[which], parse_report(raw), reason) for which, raw, reason in reports]
        record_device_reports(session, batch, policy=POLICY, now=now)

    assert _outcome(engine, at_once) == _outcome(engine, one_by_one)


@settings(max_examples=150, deadline=None)
@given(sequence=report_sequences(), data=st.data())
def test_reports_that_arrive_out_of_order_never_undo_a_later_one(
    engine: Engine, sequence: tuple[Kind, list[str]], data: st.DataObject
) -> None:
    """The device sent the reports in the drawn order, a second apart; they arrive in any order. Every report
    applied was sent after every report applied before it."""
    kind, reports = sequence
    [deployment_id] = _fresh(engine)[list(Kind).index(kind) : list(Kind).index(kind) + 1]
    start = utcnow()
    sent = [(start + timedelta(seconds=i), raw) for i, raw in enumerate(reports)]
    applied_at = []
    for at, raw in data.draw(st.permutations(sent)):
        with Session(engine) as session, session.begin():
            report = DeviceReport(deployment_id, parse_report(raw), "busy", reported_at=at)
            if record_device_report(session, report, policy=POLICY, now=start).applied:
                applied_at.append(at)

    assert applied_at == sorted(applied_at)
