"""Property: any sequence of device reports — duplicated, reordered, misdirected — leaves a deployment in a
status of its own kind, writes an event for every change and none for a refusal, and never leaves a terminal
status or goes back to Queued."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

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
    transition,
)
from models.store.devices import NewDevice, add_devices
from tests.helpers import status_of

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
