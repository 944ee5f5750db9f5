"""Enrollment through the real dispatch and the APNs emulator, on SQLite and PostgreSQL: an unenrolled device
is never pushed, a device enrolled under another topic than the certificate's is held before any push, and
a certificate of its topic sends it."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from models.enums import CredentialKind, Platform, Provider, PushEnvironment
from models.ids import new_id
from models.statuses import Kind, Status
from models.store import NewDeployment, create_deployments, ensure_organization, get_deployment
from models.store.dispatch import DispatchRecord, Invalidation, hold_for_credential, invalidate_tokens
from models.store.enrollment import Enrolled, Enrollment, enroll_devices, unenroll_device
from models.store.holds import probe_device, release_provider
from models.tables import Deployment, DeploymentEvent, Device, PushCredential
from models.types import utcnow
from sandbox import Delivery, DeviceRegistry, SandboxThread
from sandbox.tls import MdmPushCertificate, issue_mdm_push_certificate, mdm_topic
from tests.helpers import sandbox_endpoints, sessions, wait_until
from workers.policy import RetryPolicy
from workers.push_gateway import PushGateway
from workers.services.dispatch import dispatch_chunk, load, plan, record, send

POLICY = RetryPolicy.defaults()


@pytest.fixture
def registry() -> DeviceRegistry:
    return DeviceRegistry()


@pytest.fixture
def certificate(registry: DeviceRegistry) -> MdmPushCertificate:
    return issue_mdm_push_certificate(registry, topic=mdm_topic(), days=365)


@contextmanager
def running(registry: DeviceRegistry) -> Iterator[tuple[PushGateway, list[Delivery]]]:
    """The emulators and a gateway to them; the pushes that reach a device, as they arrive."""
    reached: list[Delivery] = []
    registry.subscribe(reached.append)
    with SandboxThread(registry, tls=True) as sandbox:
        gateway = PushGateway(sandbox_endpoints(sandbox))
        try:
            yield gateway, reached
        finally:
            gateway.close()


def store_certificate(engine: Engine, certificate: MdmPushCertificate) -> None:
    with Session(engine) as s, s.begin():
        ensure_organization(s, organization_id="acme")
        s.add(
            PushCredential(
                id=new_id(),
                organization_id="acme",
                provider=Provider.apns,
                kind=CredentialKind.apns_certificate,
                secret=certificate.pem_bundle,
                fingerprint=secrets.token_hex(32),
                topic=certificate.topic,
                environment=PushEnvironment.production,
            )
        )


def enroll(engine: Engine, registry: DeviceRegistry, *, topic: str) -> tuple[str, str]:
    """An iPhone whose token APNs issued for `topic`, enrolled with it: its id and token."""
    device_id, token = new_id(), secrets.token_hex(32)
    registry.add_apns_device(token, topic=topic)
    with Session(engine) as s, s.begin():
        enrolled = enroll_devices(
            s,
            organization_id="acme",
            devices=[Enrollment(device_id, Platform.ios, Provider.apns, token, "magic", topic)],
        )
    assert enrolled.created == (device_id,)
    return device_id, token


def create(engine: Engine, device_id: str, count: int = 1) -> list[str]:
    with Session(engine) as s, s.begin():
        return create_deployments(
            s, organization_id="acme", deployments=[NewDeployment(device_id, Kind.profile)] * count
        )


def deployment(engine: Engine, deployment_id: str) -> Deployment:
    with Session(engine) as s:
        found = get_deployment(s, deployment_id=deployment_id)
        assert found is not None
        return found


def test_an_unenrolled_device_is_never_pushed(
    engine: Engine, registry: DeviceRegistry, certificate: MdmPushCertificate
) -> None:
    store_certificate(engine, certificate)
    kept, kept_token = enroll(engine, registry, topic=certificate.topic)
    gone, gone_token = enroll(engine, registry, topic=certificate.topic)
    ours = create(engine, kept) + create(engine, gone)
    raced = create(engine, gone)  # created as the device was being unenrolled: it is
    with Session(engine) as s, s.begin():
        assert unenroll_device(s, organization_id="acme", device_id=gone) is not None
        s.get_one(Device, gone)  # still there
    with Session(engine) as s, s.begin():  # the race: the deployment back in Queued as unenrollment cancelled
        row = s.get_one(Deployment, raced[0])
        row.status, row.error_code, row.error_message = Status.queued, None, None
        s.add(row)

    with running(registry) as (gateway, reached):
        summary = dispatch_chunk(sessions(engine), gateway, ours + raced, policy=POLICY)

    assert summary.pushes == 1
    assert [d.token for d in reached] == [kept_token], "nothing reaches the unenrolled device"
    assert gone_token not in {d.token for d in reached}
    for cancelled in (ours[1], raced[0]):
        row = deployment(engine, cancelled)
        assert (row.status, row.error_message) == (Status.cancelled, "device unenrolled")
    with Session(engine) as s:
        events = s.exec(select(DeploymentEvent).where(DeploymentEvent.deployment_id == raced[0])).all()
    assert events[-1].to_status is Status.cancelled
    assert events[-1].actor.value == "worker"


def test_a_device_of_another_topic_is_held_before_any_push_and_goes_with_its_certificate(
    engine: Engine, registry: DeviceRegistry, certificate: MdmPushCertificate
) -> None:
    store_certificate(engine, certificate)
    right, right_token = enroll(engine, registry, topic=certificate.topic)
    elsewhere_topic = mdm_topic()
    elsewhere, elsewhere_token = enroll(engine, registry, topic=elsewhere_topic)
    ids = create(engine, right) + create(engine, elsewhere, 2)

    with running(registry) as (gateway, reached):
        summary = dispatch_chunk(sessions(engine), gateway, ids, policy=POLICY)
        assert summary.pushes == 1
        assert [d.token for d in reached] == [right_token], "no push under a topic the device is not of"
        for held_id in ids[1:]:
            held = deployment(engine, held_id)
            assert held.status is Status.queued
            assert held.attempt_count == 0, "no device was woken"
            assert held.hold_reason is not None
            assert elsewhere_topic in held.hold_reason
            assert certificate.topic in held.hold_reason
            assert held.hold_reason.endswith("upload that certificate or re-enroll"), "not cut short"
        with Session(engine) as s:
            device = s.get_one(Device, elsewhere)
            assert device.token_state.value == "valid", "no token is touched"

        # The certificate of the device's topic replaces the organization's: its holds are released.
        other = issue_mdm_push_certificate(registry, topic=elsewhere_topic, ca=certificate.ca, days=365)
        with Session(engine) as s, s.begin():
            credential = s.exec(select(PushCredential)).one()
            credential.secret, credential.topic = other.pem_bundle, other.topic
            credential.fingerprint = secrets.token_hex(32)
            s.add(credential)
            released = release_provider(s, organization_id="acme", provider=Provider.apns)
        assert sorted(released) == sorted(ids[1:])
        again = dispatch_chunk(sessions(engine), gateway, released, policy=POLICY)

    assert again.pushes == 1
    assert reached[-1].token == elsewhere_token


def test_a_hold_is_probed_on_an_enrolled_device_of_the_certificates_topic(
    engine: Engine, registry: DeviceRegistry, certificate: MdmPushCertificate
) -> None:
    store_certificate(engine, certificate)
    elsewhere, _ = enroll(engine, registry, topic=mdm_topic())
    gone, _ = enroll(engine, registry, topic=certificate.topic)
    right, _ = enroll(engine, registry, topic=certificate.topic)
    with Session(engine) as s, s.begin():
        unenroll_device(s, organization_id="acme", device_id=gone)
        for device_id, minutes in ((elsewhere, 1), (gone, 2), (right, 3)):  # seen last: the first tried
            s.get_one(Device, device_id).last_seen_at = utcnow() - timedelta(minutes=minutes)

    with Session(engine) as s:
        probed = probe_device(s, organization_id="acme", provider=Provider.apns, topic=certificate.topic)

    assert probed is not None
    assert probed.device_id == right


def test_a_token_updated_while_its_old_one_is_pushed_stays_valid_and_its_deployment_goes_again(
    engine: Engine, registry: DeviceRegistry, certificate: MdmPushCertificate
) -> None:
    store_certificate(engine, certificate)
    device_id, old_token = enroll(engine, registry, topic=certificate.topic)
    ids = create(engine, device_id)
    registry.unregister(old_token)  # APNs answers Unregistered for the old token
    new_token = secrets.token_hex(32)
    registry.add_apns_device(new_token, topic=certificate.topic)

    with running(registry) as (gateway, reached):
        loaded = load(sessions(engine), ids, policy=POLICY, now=utcnow())  # the old token read, claimed
        with Session(engine) as s, s.begin():  # the device's token update lands meanwhile
            updated = enroll_devices(
                s,
                organization_id="acme",
                devices=[Enrollment(device_id, Platform.ios, Provider.apns, new_token, "magic2", None)],
            )
        assert updated.release == tuple(ids), "the token update sends the deployment again"
        answered = send(gateway, loaded)
        assert [r.reason for a in answered for r in a.results] == ["Unregistered"]
        planned = plan(loaded, answered, failures=1, redeliver_after_s=60)
        message = json.loads(json.dumps(planned.record.as_message()))  # as a record-only message has it
        assert old_token not in json.dumps(message), "the token travels as its digest"
        assert DispatchRecord.from_message(message) == planned.record
        assert record(sessions(engine), planned.record).undeliverable == 0

        with Session(engine) as s:
            device = s.get_one(Device, device_id)
            assert device.token_state.value == "valid", "the old token's answer is not the new token's"
        row = deployment(engine, ids[0])
        assert row.status is Status.queued, "left for the dispatch the token update enqueued"
        assert row.attempt_count == 0, "the old token woke nobody: the wake-up is given back"

        again = dispatch_chunk(sessions(engine), gateway, list(updated.release), policy=POLICY)
        assert again.accepted == 1
        assert reached[-1].token == new_token


@pytest.mark.parametrize(("second", "outcome"), [("acme", "updated"), ("other-org", "device_id_taken")])
def test_two_enrollments_of_one_new_id_at_once_store_one_and_take_the_other_as_theirs(
    pg: Engine, second: str, outcome: str
) -> None:
    with Session(pg) as s, s.begin():
        for org in ("acme", "other-org"):
            ensure_organization(s, organization_id=org)
    device_id, others = new_id(), [new_id() for _ in range(3)]
    first = Enrollment(device_id, Platform.aosp, Provider.aosp, secrets.token_hex(11))
    answers: list[Enrolled | BaseException] = []

    def enroll_second() -> None:
        rows = [Enrollment(i, Platform.aosp, Provider.aosp, secrets.token_hex(11)) for i in others]
        rows.insert(1, Enrollment(device_id, Platform.aosp, Provider.aosp, secrets.token_hex(11)))
        try:
            with Session(pg) as s, s.begin():
                answers.append(enroll_devices(s, organization_id=second, devices=rows))
        except BaseException as e:  # the thread's failure, for the test to show
            answers.append(e)

    with Session(pg) as s, s.begin():
        assert enroll_devices(s, organization_id="acme", devices=[first]).created == (device_id,)
        thread = threading.Thread(target=enroll_second)
        thread.start()  # its insert waits on the uncommitted row of the same id
        wait_until(lambda: _waiting_on_a_lock(pg), 20, "the second enrollment to wait for the first")
    thread.join(timeout=20)

    [answer] = answers
    assert isinstance(answer, Enrolled), answer
    assert sorted(answer.created) == sorted(others), "the rest of the batch is stored"
    if outcome == "updated":
        assert answer.updated == (device_id,)
    else:
        assert [(r.index, r.device_id, r.reason.value) for r in answer.refused] == [(1, device_id, outcome)]
    with Session(pg) as s:
        assert s.get_one(Device, device_id).organization_id == "acme"


def _waiting_on_a_lock(engine: Engine) -> bool:
    with engine.connect() as connection:
        waiting = connection.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )
        )
        return bool(waiting.scalar_one())


def test_a_token_update_leaves_the_organizations_holds_to_their_release(engine: Engine) -> None:
    with Session(engine) as s, s.begin():
        ensure_organization(s, organization_id="acme")
    device_id = new_id()
    old = Enrollment(device_id, Platform.aosp, Provider.aosp, secrets.token_hex(11))
    with Session(engine) as s, s.begin():
        enroll_devices(s, organization_id="acme", devices=[old])
    held = create(engine, device_id)
    with Session(engine) as s, s.begin():
        hold_for_credential(s, organization_id="acme", provider=Provider.aosp, reason="key revoked")
    waiting = create(engine, device_id)

    with Session(engine) as s, s.begin():
        new = Enrollment(device_id, Platform.aosp, Provider.aosp, secrets.token_hex(11))
        updated = enroll_devices(s, organization_id="acme", devices=[new])

    assert updated.release == tuple(waiting), "the organization's hold is not the token's"
    assert deployment(engine, held[0]).hold_reason == "key revoked"
    with Session(engine) as s, s.begin():
        assert release_provider(s, organization_id="acme", provider=Provider.aosp) == held


def test_a_token_made_valid_again_after_the_dispatch_read_it_dead_fails_nothing(
    engine: Engine, registry: DeviceRegistry, certificate: MdmPushCertificate
) -> None:
    store_certificate(engine, certificate)
    device_id, _ = enroll(engine, registry, topic=certificate.topic)
    with Session(engine) as s, s.begin():
        invalidate_tokens(
            s, invalidations=[Invalidation(device_id, "Unregistered", utcnow(), 410, None, False)]
        )
    ids = create(engine, device_id)
    new_token = secrets.token_hex(32)
    registry.add_apns_device(new_token, topic=certificate.topic)

    with running(registry) as (gateway, reached):
        loaded = load(sessions(engine), ids, policy=POLICY, now=utcnow())  # the dead token read
        with Session(engine) as s, s.begin():
            updated = enroll_devices(
                s,
                organization_id="acme",
                devices=[Enrollment(device_id, Platform.ios, Provider.apns, new_token, "magic2", None)],
            )
        planned = plan(loaded, send(gateway, loaded), failures=1, redeliver_after_s=60)
        assert record(sessions(engine), planned.record).undeliverable == 0

        row = deployment(engine, ids[0])
        assert (row.status, row.attempt_count) == (Status.queued, 0)
        again = dispatch_chunk(sessions(engine), gateway, list(updated.release), policy=POLICY)
        assert again.accepted == 1
        assert reached[-1].token == new_token
