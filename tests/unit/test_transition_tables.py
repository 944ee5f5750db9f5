"""Every allowed transition of every kind is applied with its event; every other one is refused and changes
nothing. The cases are enumerated from the seed vocabulary, and the table is checked against it."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from models.enums import Actor
from models.statuses import (
    CANCELLABLE,
    OPS_RETRY_FROM,
    STATUSES,
    TERMINAL,
    TRANSITIONS,
    Kind,
    Status,
    may_move,
)
from models.store import Move, RefusalReason, transition
from tests.conftest import MakeDeployments
from tests.helpers import event_count, events_of, force_status, status_of

S = Status
PAIRS = [
    (kind, source, target)
    for kind in Kind
    for source, target in itertools.product(sorted(STATUSES[kind]), sorted(STATUSES[kind]))
]


def test_each_kind_has_exactly_the_seed_vocabulary() -> None:
    profile = {"Queued", "Waiting", "In progress", "Completed", "Failed", "Cancelled", "Error distributing",
               "Postponed", "Waiting for startup"}  # fmt: skip
    assert {s.value for s in STATUSES[Kind.profile]} == profile
    assert {s.value for s in STATUSES[Kind.app]} == profile
    assert {s.value for s in STATUSES[Kind.security_action]} == {
        "Queued", "In Progress", "Ready", "Failed", "Accepted By Device", "Cancelled"
    }  # fmt: skip
    assert {s.value for s in STATUSES[Kind.message]} == {
        "Queued", "In progress", "Notification created", "User acknowledged", "Cancelled", "Failed"
    }  # fmt: skip


def test_tables_name_only_statuses_of_their_own_kind() -> None:
    for kind, table in TRANSITIONS.items():
        for source, targets in table.items():
            assert targets <= STATUSES[kind], (kind, source)


def test_terminal_statuses_lead_nowhere_but_cancel_from_error_distributing() -> None:
    for kind in Kind:
        for status in TERMINAL[kind]:
            allowed = TRANSITIONS[kind][status]
            assert allowed <= {S.cancelled}, (kind, status)
            assert not allowed or status is S.error_distributing


def test_the_forbidden_moves_the_design_names() -> None:
    assert S.postponed not in STATUSES[Kind.security_action]
    assert S.waiting not in STATUSES[Kind.message]
    assert not may_move(Kind.profile, S.completed, S.queued)
    assert not may_move(Kind.profile, S.in_progress, S.waiting)
    assert not may_move(Kind.profile, S.in_progress, S.cancelled)  # the device started: too late to cancel
    assert CANCELLABLE[Kind.profile] == {S.queued, S.postponed, S.waiting_for_startup, S.error_distributing}


@pytest.mark.parametrize(("kind", "source", "target"), PAIRS, ids=str)
def test_transition_follows_the_table(
    sqlite: Engine, make_deployments: MakeDeployments, kind: Kind, source: Status, target: Status
) -> None:
    [deployment_id] = make_deployments(sqlite, kind)
    force_status(sqlite, deployment_id, source)
    before = event_count(sqlite)

    with Session(sqlite) as session, session.begin():
        result = transition(session, ids=[deployment_id], move=Move.to(target), actor=Actor.worker)

    if may_move(kind, source, target):
        assert [(a.from_status, a.to_status) for a in result.applied] == [(source, target)]
        assert status_of(sqlite, deployment_id) is target
        last = events_of(sqlite, deployment_id)[-1]
        assert (last.from_status, last.to_status, last.actor) == (source, target, Actor.worker)
        assert event_count(sqlite) == before + 1
    else:
        assert result.applied == ()
        [refusal] = result.refused
        assert refusal.reason is RefusalReason.not_allowed
        assert refusal.status is source
        assert status_of(sqlite, deployment_id) is source
        assert event_count(sqlite) == before


@pytest.mark.parametrize(("kind", "source"), [(k, s) for k in Kind for s in sorted(STATUSES[k])], ids=str)
def test_only_an_ops_retry_reopens_failed_or_error_distributing(
    sqlite: Engine, make_deployments: MakeDeployments, kind: Kind, source: Status
) -> None:
    [deployment_id] = make_deployments(sqlite, kind)
    force_status(sqlite, deployment_id, source)

    with Session(sqlite) as session, session.begin():
        result = transition(session, ids=[deployment_id], move=Move.ops_retry_to_queued(), actor=Actor.ops)

    if source in OPS_RETRY_FROM[kind]:
        assert [(a.from_status, a.to_status) for a in result.applied] == [(source, S.queued)]
        assert events_of(sqlite, deployment_id)[-1].actor is Actor.ops
    else:
        assert result.applied == ()
        assert status_of(sqlite, deployment_id) is source


@pytest.mark.parametrize(
    ("kind", "target"),
    [
        (Kind.security_action, S.postponed),
        (Kind.message, S.waiting),
        (Kind.message, S.waiting_for_startup),
        (Kind.profile, S.ready),
        (Kind.app, S.user_acknowledged),
    ],
    ids=str,
)
def test_a_status_of_another_kind_is_refused_as_not_applicable(
    sqlite: Engine, make_deployments: MakeDeployments, kind: Kind, target: Status
) -> None:
    [deployment_id] = make_deployments(sqlite, kind)

    with Session(sqlite) as session, session.begin():
        result = transition(session, ids=[deployment_id], move=Move.to(target), actor=Actor.device)

    assert result.applied == ()
    assert [r.reason for r in result.refused] == [RefusalReason.not_applicable]
    assert status_of(sqlite, deployment_id) is S.queued


def test_an_unknown_deployment_is_refused_and_nothing_else_changes(
    sqlite: Engine, make_deployments: MakeDeployments
) -> None:
    [known] = make_deployments(sqlite, Kind.profile)

    with Session(sqlite) as session, session.begin():
        result = transition(session, ids=["f" * 24, known], move=Move.to(S.waiting), actor=Actor.device)

    assert [a.deployment_id for a in result.applied] == [known]
    assert [(r.deployment_id, r.reason) for r in result.refused] == [
        ("f" * 24, RefusalReason.unknown_deployment)
    ]


def test_one_call_moves_many_kinds_each_to_its_own_spelling(
    sqlite: Engine, make_deployments: MakeDeployments
) -> None:
    from models.reports import Report

    ids = {kind: make_deployments(sqlite, kind, count=3) for kind in Kind}

    with Session(sqlite) as session, session.begin():
        all_ids = [i for group in ids.values() for i in group]
        result = transition(session, ids=all_ids, move=Move.for_report(Report.processing), actor=Actor.device)

    assert len(result.applied) == 12
    for kind, group in ids.items():
        expected = S.action_in_progress if kind is Kind.security_action else S.in_progress
        assert {status_of(sqlite, i) for i in group} == {expected}


def test_a_refusal_is_counted_and_logged(
    sqlite: Engine, make_deployments: MakeDeployments, caplog: pytest.LogCaptureFixture
) -> None:
    from models import metrics

    [deployment_id] = make_deployments(sqlite, Kind.profile)
    force_status(sqlite, deployment_id, S.completed)
    counter = metrics.TRANSITION_REFUSALS.labels(reason="not_allowed", actor="device")
    before = counter._value.get()

    with (
        Session(sqlite) as session,
        session.begin(),
        caplog.at_level("INFO", logger="models.store.transitions"),
    ):
        transition(session, ids=[deployment_id], move=Move.to(S.waiting), actor=Actor.device)

    assert counter._value.get() == before + 1
    [record] = caplog.records
    assert record.deployment_id == deployment_id  # type: ignore[attr-defined]
    assert "cannot move to Waiting" in record.getMessage()
