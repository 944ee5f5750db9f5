"""Dispatch of a chunk through the real providers to the emulators, on SQLite and PostgreSQL: one push per
device, receipts, dead tokens, held credentials, storms retried later, redelivery harmless."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, func, select

from models.enums import CredentialKind, CredentialStatus, Platform, Provider, PushEnvironment, TokenState
from models.ids import new_id
from models.statuses import Kind, Status
from models.store import NewDeployment, create_deployments, ensure_organization, get_deployment
from models.store.devices import NewDevice, add_devices
from models.store.holds import release_provider
from models.tables import Deployment, DeploymentEvent, Device, PushCredential, PushReceipt
from models.types import utcnow
from sandbox import Delivery, DeviceRegistry, FaultConfig, Latency, Sandbox, SandboxThread, Storm
from sandbox.credentials import register_credentials, store_credentials
from sandbox.fleet import APNS_TOPIC
from sandbox.tls import MdmPushCertificate, issue_mdm_push_certificate, mdm_topic
from tests.helpers import sandbox_endpoints, sessions
from workers.policy import RetryPolicy
from workers.providers.base import PushResult
from workers.providers.endpoints import ProviderEndpoints
from workers.push_gateway import Batch, PushGateway
from workers.queue_wait import LABELS
from workers.services.credentials import store_credential
from workers.services.dispatch import dispatch_chunk, record_later

POLICY = RetryPolicy.defaults()


@pytest.fixture
def registry() -> DeviceRegistry:
    return DeviceRegistry()


@pytest.fixture
def certificate(registry: DeviceRegistry) -> MdmPushCertificate:
    """The organization's MDM push certificate: MDM pushes are certificate-only [A-MDMPUSH]."""
    return issue_mdm_push_certificate(registry, topic=mdm_topic(), days=365)


@contextmanager
def _running(registry: DeviceRegistry, **faults: FaultConfig) -> Iterator[tuple[Sandbox, PushGateway]]:
    with SandboxThread(registry, tls=True, **faults) as sandbox:
        gateway = PushGateway(sandbox_endpoints(sandbox))
        try:
            yield sandbox, gateway
        finally:
            gateway.close()


def _setup(engine: Engine, registry: DeviceRegistry, certificate: MdmPushCertificate) -> dict[str, str]:
    """Devices: two healthy iPhones, one whose token Apple no longer knows. Deployments: a profile and an app
    for the first (one push serves both), a lock for the second, a profile and a lock for the dead one."""
    tokens = {name: secrets.token_hex(32) for name in ("first", "second", "dead")}
    for token in tokens.values():
        registry.add_apns_device(token, topic=certificate.topic)
    registry.unregister(tokens["dead"], at=1_700_000_000.0)
    with Session(engine) as s, s.begin():
        ensure_organization(s, organization_id="acme")
        s.add(
            PushCredential(
                id=new_id(),
                organization_id="acme",
                provider=Provider.apns,
                kind=CredentialKind.apns_certificate,
                secret=certificate.pem_bundle,
                fingerprint="-",
                topic=certificate.topic,
                environment=PushEnvironment.production,
            )
        )
        s.flush()
        devices = dict(
            zip(
                tokens,
                add_devices(
                    s,
                    organization_id="acme",
                    devices=[
                        NewDevice(Platform.ios, token, push_magic=f"magic-{name}")
                        for name, token in tokens.items()
                    ],
                ),
                strict=True,
            )
        )
        wanted = [
            ("first_profile", devices["first"], Kind.profile),
            ("first_app", devices["first"], Kind.app),
            ("second_lock", devices["second"], Kind.security_action),
            ("dead_profile", devices["dead"], Kind.profile),
            ("dead_lock", devices["dead"], Kind.security_action),
        ]
        ids = create_deployments(
            s, organization_id="acme", deployments=[NewDeployment(d, k) for _, d, k in wanted]
        )
    return {name: i for (name, _, _), i in zip(wanted, ids, strict=True)} | {
        f"device_{k}": v for k, v in devices.items()
    }


def _get(engine: Engine, deployment_id: str) -> Deployment:
    with Session(engine) as s:
        deployment = get_deployment(s, deployment_id=deployment_id)
        assert deployment is not None
        return deployment


def _count(engine: Engine, model: type[PushReceipt] | type[DeploymentEvent]) -> int:
    with Session(engine) as s:
        return s.exec(select(func.count()).select_from(model)).one()


def test_a_chunk_wakes_each_device_once_and_writes_every_outcome(
    engine: Engine, registry: DeviceRegistry, certificate: MdmPushCertificate
) -> None:
    ids = _setup(engine, registry, certificate)
    chunk = [ids[k] for k in ("first_profile", "first_app", "second_lock", "dead_profile", "dead_lock")]

    with _running(registry) as (_, gateway):
        summary = dispatch_chunk(sessions(engine), gateway, chunk, policy=POLICY)

    assert (summary.claimed, summary.pushes, summary.accepted, summary.undeliverable) == (5, 3, 2, 2)
    assert summary.retry is None
    first_profile, first_app = _get(engine, ids["first_profile"]), _get(engine, ids["first_app"])
    assert first_profile.status is Status.queued, "accepted: Queued until the device checks in"
    assert first_profile.receipt_id is not None
    assert first_profile.receipt_id == first_app.receipt_id, "one wake-up push served both"
    assert _count(engine, PushReceipt) == 2
    dead_profile, dead_lock = _get(engine, ids["dead_profile"]), _get(engine, ids["dead_lock"])
    assert dead_profile.status is Status.error_distributing
    assert dead_lock.status is Status.failed, "security actions have no Error distributing"
    assert (
        dead_profile.error_message
        == "APNs rejected the device token: Unregistered since 2023-11-14 22:13 UTC"
    )
    assert dead_profile.error_detail == {"provider": "apns", "status": 410, "reason": "Unregistered"}
    with Session(engine) as s:
        dead = s.get(Device, ids["device_dead"])
        assert dead is not None
        assert (dead.token_state, dead.token_invalid_reason) == (TokenState.invalid, "Unregistered")


def test_the_same_message_delivered_twice_changes_nothing_more(
    engine: Engine, registry: DeviceRegistry, certificate: MdmPushCertificate
) -> None:
    ids = _setup(engine, registry, certificate)
    chunk = [ids[k] for k in ("first_profile", "first_app", "second_lock", "dead_profile", "dead_lock")]

    with _running(registry) as (_, gateway):
        dispatch_chunk(sessions(engine), gateway, chunk, policy=POLICY)
        statuses = {k: _get(engine, ids[k]).status for k in ("first_profile", "second_lock", "dead_profile")}
        events = _count(engine, DeploymentEvent)
        again = dispatch_chunk(sessions(engine), gateway, chunk, policy=POLICY)

    assert {k: _get(engine, ids[k]).status for k in statuses} == statuses
    assert _count(engine, DeploymentEvent) == events, "no new events"
    assert again.undeliverable == 0
    assert again.accepted == 2, "at worst a second wake-up push"
    assert {_get(engine, ids[k]).attempt_count for k in ("first_profile", "first_app", "second_lock")} == {
        1
    }, "pushed twice for one enqueue: one chance to check in, counted once"


def test_a_refused_credential_holds_and_a_new_one_releases(
    engine: Engine, registry: DeviceRegistry, certificate: MdmPushCertificate
) -> None:
    ids = _setup(engine, registry, certificate)
    registry.revoke_apns_client_certificate(certificate.issued.certificate)
    chunk = [ids["first_profile"], ids["second_lock"]]

    with _running(registry) as (_, gateway):
        summary = dispatch_chunk(sessions(engine), gateway, chunk, policy=POLICY)
        held = _get(engine, ids["first_profile"])
        assert summary.held == 5, "every Queued APNs deployment of the organization, not only the chunk"
        assert held.status is Status.queued
        assert held.hold_reason is not None
        assert held.hold_reason.startswith("APNs refuses the push certificate (invalid or revoked)")
        assert _get(engine, ids["dead_lock"]).status is Status.queued, "nothing is marked failed"
        assert {_get(engine, i).attempt_count for i in chunk} == {0}, "no device was woken: no push counted"

        # Renewed with the same Apple ID: a new certificate of the same topic.
        renewed = issue_mdm_push_certificate(registry, topic=certificate.topic, ca=certificate.ca, days=365)
        with Session(engine) as s, s.begin():
            credential = s.exec(select(PushCredential)).one()
            credential.secret = renewed.pem_bundle
            credential.status = CredentialStatus.valid
            released = release_provider(s, organization_id="acme", provider=Provider.apns)
        everything = ("first_profile", "first_app", "second_lock", "dead_profile", "dead_lock")
        assert sorted(released) == sorted(ids[k] for k in everything)
        after = dispatch_chunk(sessions(engine), gateway, chunk, policy=POLICY)

    assert after.accepted == 2
    assert _get(engine, ids["first_profile"]).hold_reason is None


def test_a_5xx_storm_comes_back_as_a_delayed_retry_and_loses_nothing(
    engine: Engine, registry: DeviceRegistry, certificate: MdmPushCertificate
) -> None:
    ids = _setup(engine, registry, certificate)
    chunk = [ids["first_profile"], ids["first_app"], ids["second_lock"]]
    storm = FaultConfig(
        storm=Storm(reason="ServiceUnavailable", fraction=1.0, duration_s=3600, retry_after_s=30)
    )

    with _running(registry, apns_faults=storm) as (_, gateway):
        summary = dispatch_chunk(sessions(engine), gateway, chunk, policy=POLICY)

    assert summary.retry is not None
    assert sorted(summary.retry.deployment_ids) == sorted(chunk)
    assert summary.retry.delay_s >= 30, "Retry-After is honoured"
    assert {_get(engine, i).status for i in chunk} == {Status.queued}
    with Session(engine) as s:
        assert (
            s.exec(
                select(func.count()).select_from(Deployment).where(col(Deployment.receipt_id).is_not(None))
            ).one()
            == 0
        )


class UploadsDuringSend(PushGateway):
    """The real gateway, and an operator who stores a new credential while a batch is in flight."""

    def __init__(self, endpoints: ProviderEndpoints, upload: Callable[[], None]) -> None:
        super().__init__(endpoints)
        self.upload = upload

    def send_all(self, batches: Sequence[Batch]) -> list[list[PushResult] | Exception]:
        results = super().send_all(batches)
        self.upload()
        return results


def test_a_credential_stored_while_a_refused_batch_was_in_flight_is_kept_and_nothing_is_held(
    engine: Engine, registry: DeviceRegistry, certificate: MdmPushCertificate
) -> None:
    ids = _setup(engine, registry, certificate)
    registry.revoke_apns_client_certificate(certificate.issued.certificate)
    renewed = issue_mdm_push_certificate(registry, topic=certificate.topic, ca=certificate.ca, days=365)

    def upload() -> None:
        with Session(engine) as s, s.begin():
            store_credential(
                s,
                organization_id="acme",
                provider=Provider.apns,
                kind=CredentialKind.apns_certificate,
                secret=renewed.pem_bundle,
                environment=PushEnvironment.production,
            )

    chunk = [ids["first_profile"], ids["second_lock"]]
    with SandboxThread(registry, tls=True) as sandbox:
        racing = UploadsDuringSend(sandbox_endpoints(sandbox), upload)
        try:
            summary = dispatch_chunk(sessions(engine), racing, chunk, policy=POLICY)
        finally:
            racing.close()
        with Session(engine) as s:
            credential = s.exec(select(PushCredential)).one()
            holds = [d.hold_reason for d in s.exec(select(Deployment))]
        assert credential.secret == renewed.pem_bundle, "kept"
        assert credential.status is CredentialStatus.valid
        assert (summary.held, holds) == (0, [None] * 5), "a refusal of the old key holds nothing"
        assert summary.retry is not None
        assert sorted(summary.retry.deployment_ids) == sorted(chunk), "the batch goes again, with the new key"

        with _running(registry) as (_, gateway):
            again = dispatch_chunk(sessions(engine), gateway, summary.retry.deployment_ids, policy=POLICY)
    assert again.accepted == 2


def test_a_storm_longer_than_the_wake_ups_allowed_delays_and_only_the_deadline_fails(
    engine: Engine, registry: DeviceRegistry, certificate: MdmPushCertificate
) -> None:
    """A push the provider turns away was no wake-up: it gives its attempt back, so an outage of any length
    costs no device its pushes. The back-off grows with the failures in a row that the retry carries."""
    ids = _setup(engine, registry, certificate)
    chunk = [ids["first_profile"], ids["second_lock"]]
    storm = FaultConfig(storm=Storm(reason="ServiceUnavailable", fraction=1.0, duration_s=3600))
    tries = max(POLICY[Kind.profile].max_pushes, POLICY[Kind.security_action].max_pushes) + 2

    with _running(registry, apns_faults=storm) as (sandbox, gateway):
        failures, ceilings = 0, []
        for _ in range(tries):
            summary = dispatch_chunk(sessions(engine), gateway, chunk, policy=POLICY, failures=failures)
            assert summary.retry is not None
            assert sorted(summary.retry.deployment_ids) == sorted(chunk)
            failures = summary.retry.failures
            ceilings.append(summary.retry.delay_s)
        assert failures == tries
        assert {_get(engine, i).status for i in chunk} == {Status.queued}
        assert {_get(engine, i).attempt_count for i in chunk} == {0}, "no wake-up was spent"
        first = POLICY[Kind.security_action].push_first_s  # the shortest of the two kinds' waits
        assert ceilings[0] <= first, "the first retry waits about push_first_s"
        assert ceilings[3] >= 4 * first, "the wait doubles with each failure in a row"

        # Past the lock's deadline (one day), the storm fails it, saying so; the profile (three days) waits.
        late = _get(engine, ids["second_lock"]).created_at + timedelta(days=1, seconds=1)
        summary = dispatch_chunk(sessions(engine), gateway, chunk, policy=POLICY, failures=failures, now=late)
        assert summary.retry is not None
        assert summary.retry.deployment_ids == [ids["first_profile"]]
        lock = _get(engine, ids["second_lock"])
        assert lock.status is Status.failed
        assert lock.error_message == (
            f"APNs did not accept the push before the deadline ({tries + 1} tries in a row over 1 day): "
            "ServiceUnavailable"
        )
        sandbox.apns_faults.stop_storm()
        after = dispatch_chunk(sessions(engine), gateway, [ids["first_profile"]], policy=POLICY)
    assert after.accepted == 1
    assert _get(engine, ids["first_profile"]).attempt_count == 1, "one wake-up, the one that went out"


def _pushes(outcome: str, reason: str) -> float:
    labels = {"provider": "apns", "outcome": outcome, "reason": reason}
    return REGISTRY.get_sample_value("mdmq_push_requests_total", labels) or 0.0


def test_every_answer_is_counted_by_outcome_and_reason_and_timed(
    engine: Engine, registry: DeviceRegistry, certificate: MdmPushCertificate
) -> None:
    ids = _setup(engine, registry, certificate)
    chunk = [ids[k] for k in ("first_profile", "first_app", "second_lock", "dead_profile")]
    before = _pushes("accepted", "none"), _pushes("permanent", "Unregistered")
    timed = REGISTRY.get_sample_value("mdmq_push_duration_seconds_count", {"provider": "apns"}) or 0.0

    with _running(registry) as (_, gateway):
        dispatch_chunk(sessions(engine), gateway, chunk, policy=POLICY)

    after = _pushes("accepted", "none"), _pushes("permanent", "Unregistered")
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1), "one per device woken, not per deployment"
    assert REGISTRY.get_sample_value("mdmq_push_duration_seconds_count", {"provider": "apns"}) == timed + 3


def _waits(organization: str) -> dict[str, float]:
    """The queue wait's figures for `organization`: how many, their sum, and the buckets around 90 s."""
    labels = {"organization": organization}
    sample = REGISTRY.get_sample_value
    return {
        "count": sample("mdmq_queue_wait_seconds_count", labels) or 0.0,
        "sum": sample("mdmq_queue_wait_seconds_sum", labels) or 0.0,
        "le_60": sample("mdmq_queue_wait_seconds_bucket", labels | {"le": "60.0"}) or 0.0,
        "le_120": sample("mdmq_queue_wait_seconds_bucket", labels | {"le": "120.0"}) or 0.0,
    }


def test_a_first_push_observes_the_wait_since_create_under_its_organization(
    engine: Engine, registry: DeviceRegistry, certificate: MdmPushCertificate
) -> None:
    ids = _setup(engine, registry, certificate)
    chunk = [ids[k] for k in ("first_profile", "first_app", "second_lock")]
    deployment = SQLModel.metadata.tables["deployment"]
    with engine.begin() as connection:  # created 90 s ago: they waited that long for their first push
        created = utcnow() - timedelta(seconds=90)
        connection.execute(sa.update(deployment).where(deployment.c.id.in_(chunk)).values(created_at=created))
    LABELS.forget()  # the ranking of this test's database, not an earlier one's
    before = _waits("acme")

    with _running(registry) as (_, gateway):
        started = utcnow()
        dispatch_chunk(sessions(engine), gateway, chunk, policy=POLICY)
        took_s = (utcnow() - started).total_seconds()

    after = _waits("acme")
    gained = {k: after[k] - before[k] for k in after}
    assert (gained["count"], gained["le_60"], gained["le_120"]) == (3, 0, 3), "one per deployment, 60-120 s"
    assert 3 * 90 <= gained["sum"] <= 3 * (90 + took_s + 1)
    assert LABELS.named == {"acme"}, "the one organization with Queued work is named"


def _away_at(engine: Engine, *away: int) -> tuple[Callable[[], AbstractContextManager[Session]], list[int]]:
    """A session factory whose transactions numbered in `away` fail as a restarting server makes them fail;
    the list counts the transactions begun."""
    opened = sessions(engine)
    calls = [0]

    @contextmanager
    def session() -> Iterator[Session]:
        calls[0] += 1
        if calls[0] in away:
            raise sa_exc.OperationalError(
                "BEGIN", {}, ConnectionError("the database system is shutting down")
            )
        with opened() as s:
            yield s

    return session, calls


def test_answers_are_judged_later_when_the_window_is_away_not_pushed_again(
    engine: Engine, registry: DeviceRegistry, certificate: MdmPushCertificate
) -> None:
    """The pushes went out, then the database was away when the credential's window was to be read (a
    restart): the answers are recorded all the same, rather than failing the message, which would push
    every device of the chunk a second time."""
    ids = _setup(engine, registry, certificate)
    chunk = [ids["first_profile"], ids["first_app"], ids["second_lock"]]
    deliveries: list[str] = []
    registry.subscribe(lambda delivery: deliveries.append(delivery.token))
    away, calls = _away_at(engine, 2)  # after the claim (1): the window (2), then the answers (3)

    with _running(registry) as (_, gateway):
        summary = dispatch_chunk(away, gateway, chunk, policy=POLICY)

    assert calls == [3]
    assert summary.unrecorded is None
    assert (summary.pushes, summary.accepted) == (2, 2), "counted once"
    assert len(deliveries) == 2, "each device pushed once"
    assert {_get(engine, i).receipt_id is not None for i in chunk} == {True}, "the answers are recorded"
    assert {_get(engine, i).attempt_count for i in chunk} == {1}


def test_answers_the_database_refused_are_recorded_later_without_a_second_push(
    engine: Engine, registry: DeviceRegistry, certificate: MdmPushCertificate
) -> None:
    """The pushes went out, then the database refused their answers (a restart): the dispatch hands them
    back as a record (plain data, for a record-only message) instead of failing, which would push every
    device of the chunk again. Written once the database is back, and once only, however often it comes."""
    ids = _setup(engine, registry, certificate)
    chunk = [ids[k] for k in ("first_profile", "first_app", "second_lock", "dead_profile")]
    deliveries: list[str] = []
    registry.subscribe(lambda delivery: deliveries.append(delivery.token))
    away, calls = _away_at(engine, 3)  # the claim (1), the window (2), the answers (3)

    with _running(registry) as (_, gateway):
        summary = dispatch_chunk(away, gateway, chunk, policy=POLICY)

    assert calls == [3]
    assert (summary.pushes, summary.accepted) == (3, 2)
    assert summary.unrecorded is not None
    assert {_get(engine, i).receipt_id for i in chunk} == {None}, "nothing written yet"
    message = json.loads(json.dumps(summary.unrecorded.as_message()))

    recorded = record_later(sessions(engine), message)
    events = _count(engine, DeploymentEvent)
    again = record_later(sessions(engine), message)  # the record-only message delivered twice

    assert recorded.undeliverable == 1
    assert (again.already, again.undeliverable) == (True, 0)
    assert _count(engine, PushReceipt) == 2, "one receipt a push, written once"
    assert _count(engine, DeploymentEvent) == events
    first_profile, first_app = _get(engine, ids["first_profile"]), _get(engine, ids["first_app"])
    assert first_profile.receipt_id is not None
    assert first_profile.receipt_id == first_app.receipt_id
    assert first_profile.next_attempt_at is not None, "re-pushed if the device does not check in"
    dead = _get(engine, ids["dead_profile"])
    assert dead.status is Status.error_distributing
    assert dead.error_message == "APNs rejected the device token: Unregistered since 2023-11-14 22:13 UTC"
    assert len(deliveries) == 2, "each device pushed once (the third, unregistered, got a 410)"
    assert {_get(engine, i).attempt_count for i in chunk} == {1}


def test_a_record_delivered_again_after_a_later_push_leaves_that_push_recorded(
    engine: Engine, registry: DeviceRegistry, certificate: MdmPushCertificate
) -> None:
    """A record-only message delivered again (its worker died before the acknowledgement) after the re-push
    sweep woke the devices again: the later push's receipts and re-push times stay; nothing is written
    twice and no deployment points back at the older push."""
    ids = _setup(engine, registry, certificate)
    chunk = [ids[k] for k in ("first_profile", "first_app", "second_lock")]
    away, _ = _away_at(engine, 3)  # the claim (1), the window (2), the answers (3)

    with _running(registry) as (_, gateway):
        summary = dispatch_chunk(away, gateway, chunk, policy=POLICY)
        assert summary.unrecorded is not None
        message = json.loads(json.dumps(summary.unrecorded.as_message()))
        record_later(sessions(engine), message)
        dispatch_chunk(sessions(engine), gateway, chunk, policy=POLICY)  # the re-push sweep's message
    later = {i: (_get(engine, i).receipt_id, _get(engine, i).next_attempt_at) for i in chunk}
    receipts = _count(engine, PushReceipt)

    again = record_later(sessions(engine), message)

    assert again.already
    assert _count(engine, PushReceipt) == receipts == 4, "two pushes of two devices, each written once"
    assert {i: (_get(engine, i).receipt_id, _get(engine, i).next_attempt_at) for i in chunk} == later


def test_a_turned_away_push_recorded_twice_gives_its_attempt_back_once(
    engine: Engine, registry: DeviceRegistry, certificate: MdmPushCertificate
) -> None:
    """A record of pushes the provider turned away gives back the claim's count: once, not at every
    delivery of its message."""
    ids = _setup(engine, registry, certificate)
    chunk = [ids["first_profile"], ids["second_lock"]]
    storm = FaultConfig(storm=Storm(reason="ServiceUnavailable", fraction=1.0, duration_s=3600))
    away, _ = _away_at(engine, 2)  # the claim (1), the answers (2): turned-away answers need no window
    with Session(engine) as s, s.begin():  # pushed once before, and counted
        for deployment in s.exec(select(Deployment).where(col(Deployment.id).in_(chunk))):
            deployment.attempt_count = 1
            s.add(deployment)

    with _running(registry, apns_faults=storm) as (_, gateway):
        summary = dispatch_chunk(away, gateway, chunk, policy=POLICY)
    assert summary.unrecorded is not None
    assert summary.retry is not None
    message = summary.unrecorded.as_message()
    record_later(sessions(engine), message)
    record_later(sessions(engine), message)

    assert {_get(engine, i).attempt_count for i in chunk} == {1}, "the claim's count, given back once"
    assert {_get(engine, i).status for i in chunk} == {Status.queued}


def test_a_chunk_sends_to_each_provider_at_once_not_in_turn(engine: Engine) -> None:
    """A chunk of iPhones and AOSP devices waits for its slowest provider, not for each in turn: both
    emulators hold their answers 2 s after a push reaches its device, and the second push reaches its
    device while the first's answer is still held. Sent in turn, it would leave only after that answer."""
    registry = DeviceRegistry()
    keys = register_credentials(registry)
    iphone, aosp = secrets.token_hex(32), secrets.token_hex(16)
    registry.add_apns_device(iphone, topic=APNS_TOPIC, environment="development")
    registry.add_aosp_device(aosp)
    delivered: dict[str, float] = {}  # token -> when the emulator delivered the push (its own record)

    def arrived(delivery: Delivery) -> None:
        delivered.setdefault(delivery.token, delivery.delivered_at)

    registry.subscribe(arrived)
    with Session(engine) as s, s.begin():
        ensure_organization(s, organization_id="acme")
        store_credentials(s, "acme", keys)
        devices = add_devices(
            s,
            organization_id="acme",
            devices=[NewDevice(Platform.ios, iphone, push_magic="magic"), NewDevice(Platform.aosp, aosp)],
        )
        ids = create_deployments(
            s, organization_id="acme", deployments=[NewDeployment(d, Kind.profile) for d in devices]
        )
    held_s = 2.0
    held = FaultConfig(latency=Latency.fixed(held_s * 1000))
    with _running(registry, apns_faults=held, aosp_faults=held) as (_, gateway):
        summary = dispatch_chunk(sessions(engine), gateway, ids, policy=POLICY)
    assert (summary.pushes, summary.accepted) == (2, 2)
    first, second = sorted(delivered[token] for token in (iphone, aosp))
    # The first answer left no sooner than `held_s` after the first delivery.
    assert second < first + held_s, "the second push reached its device only after the first's answer"
