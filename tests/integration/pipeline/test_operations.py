"""Storing a credential releases what was held for it; the relay finds what was never enqueued; an operator
cancels what has not started and retries what failed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from models.enums import Actor, CredentialKind, CredentialStatus, Platform, Provider, PushEnvironment
from models.reports import Report
from models.statuses import Kind, Status
from models.store import (
    Effects,
    ErrorInfo,
    Move,
    NewDeployment,
    create_deployments,
    ensure_organization,
    transition,
)
from models.store.deployments import pending_commands
from models.store.devices import NewDevice, add_devices
from models.store.dispatch import (
    claim_for_push,
    give_back_attempts,
    hold_for_credential,
    release_holds,
)
from models.store.sweeps import due_repush, mark_enqueued
from models.tables import Deployment, PushCredential, table_of
from models.types import utcnow
from sandbox.tls import issue_client_certificate, make_ca
from tests.conftest import MakeDeployments
from tests.helpers import force_status, status_of
from tests.integration.providers.conftest import TOPIC, private_pem
from workers.enqueue import as_due, enqueue_dispatch
from workers.policy import RetryPolicy
from workers.providers.credentials import InvalidCredential
from workers.services.credentials import store_credential
from workers.services.operations import cancel_deployments, retry_deployments
from workers.services.sweeps import relay_unenqueued, repush_unanswered, requeue_postponed

DEPLOYMENT = table_of(Deployment)


def _push_certificate(engine: Engine, bundle: str) -> list[str]:
    with Session(engine) as s, s.begin():
        stored = store_credential(
            s,
            organization_id="acme",
            provider=Provider.apns,
            kind=CredentialKind.apns_certificate,
            secret=bundle,
            environment=PushEnvironment.sandbox,
        )
        return stored.released


def test_a_valid_credential_releases_every_deployment_held_for_it(
    engine: Engine, make_deployments: MakeDeployments
) -> None:
    ids = make_deployments(engine, Kind.profile, count=3)
    with Session(engine) as s, s.begin():
        assert (
            hold_for_credential(
                s, organization_id="acme", provider=Provider.apns, reason="APNs credential expired"
            )
            == 3
        )

    issued = issue_client_certificate(make_ca(), TOPIC, days=365)
    released = _push_certificate(engine, (issued.cert_pem + issued.key_pem).decode())

    assert sorted(released) == sorted(ids)
    with Session(engine) as s:
        credential = s.exec(select(PushCredential)).one()
    assert credential.status is CredentialStatus.valid
    assert len(credential.fingerprint) == 64


def test_unusable_material_is_refused_and_stores_nothing(
    engine: Engine, make_deployments: MakeDeployments
) -> None:
    make_deployments(engine, Kind.profile)

    certificate = issue_client_certificate(make_ca(), TOPIC).cert_pem.decode()
    not_a_key = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    with pytest.raises(InvalidCredential):
        _push_certificate(engine, certificate + not_a_key)

    with Session(engine) as s:
        assert s.exec(select(PushCredential)).all() == []


def test_an_inconsistent_rsa_key_is_refused_at_the_door(engine: Engine) -> None:
    # Workers load a stored key without the RSA consistency check (it costs 56 ms a load), so the check
    # must happen here: a key whose private exponent does not match its primes is refused.
    good = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    broken = rsa.RSAPrivateNumbers(
        good.p, good.q, good.d + 2, good.dmp1, good.dmq1, good.iqmp, good.public_numbers
    ).private_key(unsafe_skip_rsa_key_validation=True)
    secret = json.dumps({"client_email": "push@acme.example", "private_key": private_pem(broken)})

    with pytest.raises(InvalidCredential, match="private_key"), Session(engine) as s, s.begin():
        store_credential(
            s,
            organization_id="acme",
            provider=Provider.fcm,
            kind=CredentialKind.fcm_service_account,
            secret=secret,
            project_id="acme-mdm",
        )

    with Session(engine) as s:
        assert s.exec(select(PushCredential)).all() == []


@pytest.mark.parametrize(
    ("days", "status"), [(10, CredentialStatus.expiring), (-1, CredentialStatus.expired)]
)
def test_a_certificates_expiry_is_read_from_it(
    engine: Engine, make_deployments: MakeDeployments, days: int, status: CredentialStatus
) -> None:
    make_deployments(engine, Kind.profile)
    ca = make_ca()
    certificate = issue_client_certificate(
        ca, TOPIC, not_before=utcnow() - timedelta(days=30), days=30 + days
    )
    bundle = (certificate.cert_pem + certificate.key_pem).decode()
    with Session(engine, expire_on_commit=False) as s, s.begin():
        hold_for_credential(
            s, organization_id="acme", provider=Provider.apns, reason="APNs credential expired"
        )
        stored = store_credential(
            s,
            organization_id="acme",
            provider=Provider.apns,
            kind=CredentialKind.apns_certificate,
            secret=bundle,
        )

    assert stored.credential.status is status
    assert stored.credential.not_after == certificate.certificate.not_valid_after_utc
    assert (stored.released != []) is (status is CredentialStatus.expiring), "an expired one releases nothing"


def test_the_relay_finds_what_was_committed_but_never_enqueued(
    engine: Engine, make_deployments: MakeDeployments
) -> None:
    ids = make_deployments(engine, Kind.app, count=4)  # committed; the process "crashed" before enqueueing
    now = utcnow()

    with Session(engine) as s, s.begin():
        assert relay_unenqueued(s, now=now, grace_s=30) == [], "they may still be on their way"
        found = relay_unenqueued(s, now=now + timedelta(minutes=1), grace_s=30)
        assert sorted(d.id for d in found) == sorted(ids)
        mark_enqueued(s, ids=[d.id for d in found], now=now, redeliver_at=now)
    with Session(engine) as s:
        assert relay_unenqueued(s, now=now + timedelta(minutes=1), grace_s=30) == []


@contextmanager
def _transaction(engine: Engine) -> Iterator[Session]:
    with Session(engine) as s, s.begin():
        yield s


@pytest.mark.parametrize("created_enqueued", [True, False])
def test_a_failed_enqueue_leaves_the_rows_saying_which_messages_went(
    engine: Engine, created_enqueued: bool
) -> None:
    # Six deployments in chunks of two; the broker goes down at the second message.
    now = utcnow()
    with Session(engine) as s, s.begin():
        ensure_organization(s, organization_id="acme")
        devices = add_devices(
            s, organization_id="acme", devices=[NewDevice(Platform.ios, f"token-{i}") for i in range(6)]
        )
        wanted = [NewDeployment(device_id, Kind.app) for device_id in devices]
        ids = create_deployments(
            s,
            organization_id="acme",
            deployments=wanted,
            now=now,
            redeliver_after_s=600 if created_enqueued else None,
        )
    sent: list[list[str]] = []

    def send(chunk: list[str]) -> None:
        if sent:
            raise ConnectionError("broker down")
        sent.append(chunk)

    with pytest.raises(ConnectionError):
        enqueue_dispatch(
            lambda: _transaction(engine),
            as_due([(i, "acme", Kind.app, False) for i in ids]),
            urgent=send,
            bulk=send,
            chunk_size=2,
            redeliver_after_s=600,
            marked=created_enqueued,
        )

    [went] = sent
    with Session(engine) as s, s.begin():
        relayed = relay_unenqueued(s, now=now + timedelta(minutes=1), grace_s=30)
        assert sorted(d.id for d in relayed) == sorted(set(ids) - set(went)), "the relay sends the rest"
        lost = {d.id for d in due_repush(s, now=utcnow() + timedelta(seconds=601), limit=10)}
        assert lost == set(went), "should its message be lost, the re-push sweep takes what went"


def test_the_relay_finds_a_requeued_or_released_deployment_that_was_never_enqueued(
    engine: Engine, make_deployments: MakeDeployments
) -> None:
    postponed, held = make_deployments(engine, Kind.profile, count=2)
    now = utcnow()
    with Session(engine) as s, s.begin():
        mark_enqueued(s, ids=[postponed, held], now=now, redeliver_at=now)
    force_status(engine, postponed, Status.postponed)
    with engine.begin() as connection:
        connection.execute(sa.update(DEPLOYMENT).values(next_attempt_at=now, updated_at=now))
    later = now + timedelta(minutes=5)
    with Session(engine) as s, s.begin():
        # The sweep re-queues the postponed one and a credential upload releases the held one; both commit,
        # then the process dies before it enqueues them.
        assert [d.id for d in requeue_postponed(s, now=later)] == [postponed]
        hold_for_credential(s, organization_id="acme", provider=Provider.apns, reason="key revoked")
        released = release_holds(s, organization_id="acme", provider=Provider.apns, now=later)
        assert sorted(released) == sorted([postponed, held])
    with Session(engine) as s:
        assert relay_unenqueued(s, now=later, grace_s=30) == [], "the grace counts from the re-queue"
        found = relay_unenqueued(s, now=later + timedelta(seconds=31), grace_s=30)
    assert sorted(d.id for d in found) == sorted([postponed, held])


def test_a_message_the_broker_lost_is_sent_again_by_the_re_push_sweep(
    engine: Engine, make_deployments: MakeDeployments
) -> None:
    """Enqueued, then lost with a broker that restarted without its data, or with a worker killed between
    its claim and its result: nothing else would ever send it. The re-push sweep takes it again once it is
    `redeliver_after_s` overdue, and sends it without failing it: a lost message woke no device."""
    lost, claimed, answered = make_deployments(engine, Kind.profile, count=3)
    policy, now = RetryPolicy.defaults(), utcnow()
    with Session(engine) as s, s.begin():
        mark_enqueued(s, ids=[lost, claimed], now=now, redeliver_at=now + timedelta(seconds=600))
        assert [c.id for c in claim_for_push(s, ids=[claimed], now=now)] == [claimed]  # then the worker died
    repush_at = now + timedelta(hours=1)
    with engine.begin() as connection:  # its push was answered: the dispatch set the device's re-push time
        connection.execute(
            sa.update(DEPLOYMENT).where(DEPLOYMENT.c.id == answered).values(next_attempt_at=repush_at)
        )
    with Session(engine) as s, s.begin():
        mark_enqueued(s, ids=[answered], now=now, redeliver_at=now + timedelta(seconds=600))

    def sweep(at: datetime) -> list[str]:
        with Session(engine) as s, s.begin():
            return sorted(d.id for d in repush_unanswered(s, policy=policy, now=at, redeliver_after_s=600))

    assert sweep(now + timedelta(seconds=599)) == [], "the message may still be waiting in the queue"
    assert sweep(now + timedelta(seconds=601)) == sorted([lost, claimed])
    assert {status_of(engine, i) for i in (lost, claimed)} == {Status.queued}, "sent again, not failed"
    assert sweep(now + timedelta(seconds=1199)) == [], "taken again only when the new message is overdue too"
    assert sweep(now + timedelta(seconds=1202)) == sorted([lost, claimed])
    with Session(engine) as s:
        row = s.get(Deployment, answered)
        assert row is not None
        assert row.next_attempt_at == repush_at, "a re-push time ahead stands"


def test_a_wake_up_counts_once_each_time_a_deployment_is_enqueued(
    engine: Engine, make_deployments: MakeDeployments
) -> None:
    """The wake-ups a deployment is allowed are chances for its device to check in: a second message for the
    same enqueue (a rollout's message still queued when a hold was released, a redelivery) pushes again
    but is no new chance; the re-push sweep's, a release's and a retry after a refused push are."""
    (deployment,) = make_deployments(engine, Kind.profile)
    policy, now = RetryPolicy.defaults(), utcnow()

    def claim(at: datetime) -> int:
        with Session(engine) as s, s.begin():
            (claimed,) = claim_for_push(s, ids=[deployment], now=at)
            return claimed.attempt_count

    with Session(engine) as s, s.begin():
        mark_enqueued(s, ids=[deployment], now=now, redeliver_at=now + timedelta(seconds=600))
    assert claim(now + timedelta(seconds=1)) == 1
    assert claim(now + timedelta(seconds=2)) == 1, "the same enqueue's second message"
    with engine.begin() as connection:  # the push was answered; the device stays silent
        connection.execute(sa.update(DEPLOYMENT).values(next_attempt_at=now + timedelta(minutes=10)))
    with Session(engine) as s, s.begin():
        due = repush_unanswered(s, policy=policy, now=now + timedelta(minutes=11), redeliver_after_s=600)
        assert [d.id for d in due] == [deployment]
    assert claim(now + timedelta(minutes=11, seconds=1)) == 2, "the re-push sweep's: a new wake-up"
    assert claim(now + timedelta(minutes=11, seconds=2)) == 2
    with Session(engine) as s, s.begin():
        give_back_attempts(s, ids=[deployment], redeliver_at=now + timedelta(minutes=12))
    assert claim(now + timedelta(minutes=12)) == 2, (
        "the retry of a refused push counts the push that went out"
    )
    with Session(engine) as s, s.begin():
        hold_for_credential(s, organization_id="acme", provider=Provider.apns, reason="key revoked")
        assert release_holds(s, organization_id="acme", provider=Provider.apns) == [deployment]
    assert claim(now + timedelta(minutes=13)) == 3, "released: enqueued anew"
    assert claim(now + timedelta(minutes=13, seconds=1)) == 3, "and a message left from before the hold"


def test_a_device_that_checks_in_gets_its_held_commands_too(
    engine: Engine, make_deployments: MakeDeployments
) -> None:
    """A hold stops the pushes, not the check-in: a device woken before the credential was refused fetches
    what was held, and the fetch ends the hold."""
    held, other = make_deployments(engine, Kind.profile, count=2)
    with Session(engine) as s, s.begin():
        hold_for_credential(s, organization_id="acme", provider=Provider.apns, reason="key revoked")
        device = s.get(Deployment, held)
        assert device is not None
        assert pending_commands(s, device_id=device.device_id) == [(held, Kind.profile)]
    with Session(engine) as s, s.begin():
        fetched = transition(s, ids=[held], move=Move.for_report(Report.fetched), actor=Actor.device)
    assert [a.deployment_id for a in fetched.applied] == [held]
    with Session(engine) as s:
        rows = {d.id: d for d in s.exec(select(Deployment))}
    assert (rows[held].status, rows[held].hold_reason) == (Status.waiting, None)
    assert (rows[other].status, rows[other].hold_reason) == (Status.queued, "key revoked")


def test_cancel_stops_what_has_not_started_and_later_reports_change_nothing(
    engine: Engine, make_deployments: MakeDeployments
) -> None:
    queued, started = make_deployments(engine, Kind.profile, count=2)
    force_status(engine, started, Status.in_progress)

    with Session(engine) as s, s.begin():
        result = cancel_deployments(s, ids=[queued, started])
    with Session(engine) as s, s.begin():
        late = transition(s, ids=[queued], move=Move.for_report(Report.acknowledged), actor=Actor.device)

    assert [a.deployment_id for a in result.applied] == [queued]
    assert [r.deployment_id for r in result.refused] == [started]
    assert late.applied == ()
    assert (status_of(engine, queued), status_of(engine, started)) == (Status.cancelled, Status.in_progress)


def test_an_ops_retry_reopens_a_failed_deployment_afresh(
    engine: Engine, make_deployments: MakeDeployments
) -> None:
    failed, completed = make_deployments(engine, Kind.profile, count=2)
    with Session(engine) as s, s.begin():
        effects = Effects(error=ErrorInfo("device_error", "The device reported an error: boom"))
        transition(s, ids=[failed], move=Move.to(Status.failed), actor=Actor.device, effects=effects)
    force_status(engine, completed, Status.completed)

    with Session(engine) as s, s.begin():
        result = retry_deployments(s, ids=[failed, completed])

    assert [a.deployment_id for a in result.applied] == [failed]
    with Session(engine) as s:
        from models.store import deployment_history, get_deployment

        reopened = get_deployment(s, deployment_id=failed)
        assert reopened is not None
        assert (reopened.status, reopened.error_message, reopened.attempt_count) == (Status.queued, None, 0)
        history = deployment_history(s, deployment_id=failed)
    assert [(e.to_status, e.actor) for e in history] == [
        (Status.failed, Actor.device),
        (Status.queued, Actor.ops),
    ]
    assert history[0].detail == {
        "error_code": "device_error",
        "error_message": "The device reported an error: boom",
    }


def test_a_sweeps_move_applies_only_to_rows_still_as_it_read_them(
    engine: Engine, make_deployments: MakeDeployments
) -> None:
    answered, rescheduled, due = make_deployments(engine, Kind.profile, count=3)
    now = utcnow()
    with Session(engine) as s, s.begin():
        for deployment_id, retry_in_s in ((answered, -1), (rescheduled, 60), (due, -1)):
            deployment = s.get(Deployment, deployment_id)
            assert deployment is not None
            deployment.next_attempt_at = now + timedelta(seconds=retry_in_s)
    # Between the sweep's read and its write, one device checked in; another's push was answered and
    # its re-push time moved on.
    force_status(engine, answered, Status.waiting)

    with Session(engine) as s, s.begin():
        move = Move.to(Status.failed).unless_changed_since_read(frozenset({Status.queued}), due_by=now)
        result = transition(s, ids=[answered, rescheduled, due], move=move, actor=Actor.scheduler)

    assert [a.deployment_id for a in result.applied] == [due]
    assert status_of(engine, answered) is Status.waiting
    assert status_of(engine, rescheduled) is Status.queued
