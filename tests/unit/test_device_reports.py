"""Device reports through the report service: postponements follow the retry policy, and the Failed texts
say what happened in an admin's words."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from models.enums import Provider
from models.reports import Report
from models.statuses import Kind, Status
from models.store import RefusalReason, get_deployment
from models.store.dispatch import hold_for_credential
from models.store.maintenance import held_counts
from models.tables import Deployment, Organization
from models.types import utcnow
from tests.conftest import MakeDeployments
from workers.policy import RetryPolicy
from workers.services.reports import (
    Binding,
    CheckInReport,
    DeviceReport,
    bind_reports,
    record_device_report,
    record_device_reports,
)

POLICY = RetryPolicy.defaults()


def _report(engine: Engine, report: DeviceReport, at_hours: float = 0) -> None:
    with Session(engine) as session, session.begin():
        record_device_report(session, report, policy=POLICY, now=utcnow() + timedelta(hours=at_hours))


def _deployment(engine: Engine, deployment_id: str) -> Deployment:
    with Session(engine) as session:
        deployment = get_deployment(session, deployment_id=deployment_id)
        assert deployment is not None
        return deployment


def test_not_now_postpones_with_a_retry_time_from_the_policy(
    sqlite: Engine, make_deployments: MakeDeployments
) -> None:
    [deployment_id] = make_deployments(sqlite, Kind.profile)
    before = utcnow()

    _report(sqlite, DeviceReport(deployment_id, Report.not_now, reason="device locked with passcode"))

    deployment = _deployment(sqlite, deployment_id)
    assert deployment.status is Status.postponed
    assert deployment.postpone_count == 1
    assert deployment.last_device_reason == "device locked with passcode"
    assert deployment.next_attempt_at is not None
    first = POLICY[Kind.profile].postpone_first_s
    assert before + timedelta(seconds=first / 2) <= deployment.next_attempt_at
    assert deployment.next_attempt_at <= utcnow() + timedelta(seconds=first)


def test_a_duplicated_not_now_is_refused_and_counts_nothing(
    sqlite: Engine, make_deployments: MakeDeployments
) -> None:
    [deployment_id] = make_deployments(sqlite, Kind.app)
    _report(sqlite, DeviceReport(deployment_id, Report.not_now, reason="busy"))
    _report(sqlite, DeviceReport(deployment_id, Report.not_now, reason="busy"))

    assert _deployment(sqlite, deployment_id).postpone_count == 1


def test_the_last_allowed_postponement_fails_with_what_happened(
    sqlite: Engine, make_deployments: MakeDeployments
) -> None:
    [deployment_id] = make_deployments(sqlite, Kind.profile)
    limit = POLICY[Kind.profile].max_postpones
    for attempt in range(limit):
        # The sweep returns it to Queued, the device fetches it and says NotNow again, hours apart.
        _report(sqlite, DeviceReport(deployment_id, Report.fetched), at_hours=attempt * 5)
        _report(sqlite, DeviceReport(deployment_id, Report.not_now, reason="device locked with passcode"),
                at_hours=attempt * 5)  # fmt: skip

    deployment = _deployment(sqlite, deployment_id)
    assert deployment.status is Status.failed
    assert deployment.error_code == "postponed_too_often"
    assert deployment.error_message == (
        f"Postponed {limit} times over 2 days; last device reason: device locked with passcode"
    )


def test_an_organization_may_allow_more_postponements(
    sqlite: Engine, make_deployments: MakeDeployments
) -> None:
    [deployment_id] = make_deployments(sqlite, Kind.profile)
    with Session(sqlite) as session, session.begin():
        organization = session.get(Organization, "acme")
        assert organization is not None
        organization.retry_policy = {"profile": {"max_postpones": 1}}

    _report(sqlite, DeviceReport(deployment_id, Report.not_now, reason="busy"))

    assert _deployment(sqlite, deployment_id).status is Status.failed


def test_a_device_error_keeps_the_error_chain(sqlite: Engine, make_deployments: MakeDeployments) -> None:
    [deployment_id] = make_deployments(sqlite, Kind.profile)
    chain = [
        {"ErrorCode": 4001, "ErrorDomain": "MCInstallationErrorDomain",
         "LocalizedDescription": "Profile Installation Failed",
         "USEnglishDescription": "Profile Installation Failed"},
        {"ErrorCode": 2003, "ErrorDomain": "MCPayloadErrorDomain",
         "USEnglishDescription": "The Wi-Fi payload has an invalid password."},
    ]  # fmt: skip

    _report(sqlite, DeviceReport(deployment_id, Report.error, error_chain=chain))

    deployment = _deployment(sqlite, deployment_id)
    assert deployment.status is Status.failed
    assert deployment.error_code == "device_error"
    assert deployment.error_message == (
        "The device reported an error: Profile Installation Failed (MCInstallationErrorDomain 4001)"
    )
    assert deployment.error_detail is not None
    assert deployment.error_detail["error_chain"] == chain


@pytest.mark.parametrize(
    ("kind", "report", "status"),
    [
        (Kind.profile, Report.agent_not_started, Status.waiting_for_startup),
        (Kind.security_action, Report.accepted, Status.accepted_by_device),
        (Kind.message, Report.notification_shown, Status.notification_created),
    ],
)
def test_other_reports_move_to_their_kinds_status(
    sqlite: Engine, make_deployments: MakeDeployments, kind: Kind, report: Report, status: Status
) -> None:
    [deployment_id] = make_deployments(sqlite, kind)

    _report(sqlite, DeviceReport(deployment_id, report))

    assert _deployment(sqlite, deployment_id).status is status


def test_not_now_for_a_security_action_is_refused(sqlite: Engine, make_deployments: MakeDeployments) -> None:
    [deployment_id] = make_deployments(sqlite, Kind.security_action)

    _report(sqlite, DeviceReport(deployment_id, Report.not_now, reason="busy"))

    deployment = _deployment(sqlite, deployment_id)
    assert (deployment.status, deployment.postpone_count) == (Status.queued, 0)


def test_a_report_counts_the_unanswered_pushes_afresh(
    sqlite: Engine, make_deployments: MakeDeployments
) -> None:
    [deployment_id] = make_deployments(sqlite, Kind.app)
    with Session(sqlite) as session, session.begin():
        deployment = session.get(Deployment, deployment_id)
        assert deployment is not None
        deployment.attempt_count = 3  # three wake-up pushes went unanswered

    _report(sqlite, DeviceReport(deployment_id, Report.not_now, reason="busy"))

    assert _deployment(sqlite, deployment_id).attempt_count == 0


def test_a_report_older_than_the_last_applied_one_is_refused_as_out_of_order(
    sqlite: Engine, make_deployments: MakeDeployments
) -> None:
    [deployment_id] = make_deployments(sqlite, Kind.profile)
    sent = utcnow()
    _report(sqlite, DeviceReport(deployment_id, Report.not_now, reason="busy", reported_at=sent))

    with Session(sqlite) as session, session.begin():
        late = DeviceReport(deployment_id, Report.fetched, reported_at=sent - timedelta(seconds=2))
        result = record_device_report(session, late, policy=POLICY)

    assert [r.reason for r in result.refused] == [RefusalReason.out_of_order]
    deployment = _deployment(sqlite, deployment_id)
    assert (deployment.status, deployment.last_report_at) == (Status.postponed, sent)


def test_a_held_deployment_whose_device_checks_in_is_held_no_more(
    sqlite: Engine, make_deployments: MakeDeployments
) -> None:
    """A revoked push key holds what it would wake, but a device that checks in on its own still fetches its
    commands: the deployment moves on, and no longer counts as held (the held gauge, the API's `held`)."""
    held_id, other_id = make_deployments(sqlite, Kind.profile, count=2)
    with Session(sqlite) as session, session.begin():
        hold_for_credential(
            session, organization_id="acme", provider=Provider.apns, reason="APNs credential revoked"
        )

    _report(sqlite, DeviceReport(held_id, Report.fetched))

    moved, still = _deployment(sqlite, held_id), _deployment(sqlite, other_id)
    assert (moved.status, moved.hold_reason) == (Status.waiting, None)
    assert (still.status, still.hold_reason) == (Status.queued, "APNs credential revoked")
    with Session(sqlite) as session:
        assert held_counts(session) == {(Provider.apns, "APNs credential revoked"): 1}


def test_a_check_in_is_bound_to_its_device_and_the_servers_clock_report_by_report(
    sqlite: Engine, make_deployments: MakeDeployments
) -> None:
    """The binding the API and the report actor share, on SQLite: each report is judged on its own."""
    mine, theirs = make_deployments(sqlite, Kind.profile, count=2)
    device, other_device = _deployment(sqlite, mine).device_id, _deployment(sqlite, theirs).device_id
    now = utcnow()

    def sent(device_id: str, deployment_id: str, report: Report, ahead_s: float = 0) -> CheckInReport:
        return CheckInReport(
            device_id, DeviceReport(deployment_id, report, reported_at=now + timedelta(seconds=ahead_s))
        )

    with Session(sqlite) as session, session.begin():

        def bind(organization_id: str, *reports: CheckInReport) -> Binding:
            return bind_reports(
                session, organization_id=organization_id, reports=reports, max_lead_s=300, now=now
            )

        binding = bind(
            "acme",
            sent(device, theirs, Report.fetched),
            sent(other_device, mine, Report.fetched),
            sent(device, mine, Report.fetched, ahead_s=60),
            sent(device, mine, Report.acknowledged),
        )
        refused = [(r.deployment_id, r.reason) for r in binding.refused]
        assert refused == [(theirs, RefusalReason.not_this_device), (mine, RefusalReason.not_this_device)]
        assert [r.reported_at for r in binding.reports] == [now, now], "a minute ahead is taken as now"
        for organization_id, report, reason in [
            ("other-org", sent(device, mine, Report.fetched), RefusalReason.unknown_deployment),
            ("acme", sent(device, mine, Report.fetched, ahead_s=301), RefusalReason.reported_in_future),
        ]:
            assert [r.reason for r in bind(organization_id, report).refused] == [reason]
        record_device_reports(session, binding.reports, policy=POLICY, now=now)

    assert _deployment(sqlite, mine).status is Status.completed
    assert _deployment(sqlite, theirs).status is Status.queued


def test_a_report_time_without_a_time_zone_is_not_a_check_in_report() -> None:
    naive = DeviceReport("a" * 24, Report.fetched, reported_at=datetime(2026, 11, 23, 10, 0))
    with pytest.raises(ValueError, match="has no time zone"):
        CheckInReport("b" * 24, naive)
