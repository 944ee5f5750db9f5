"""A wrong credential never kills a fleet's tokens: rollouts to 1,000 simulated devices, on PostgreSQL, with
the workers on the in-process broker and the sandbox's TLS servers answering as the providers do.

- A push certificate of another topic: APNs answers DeviceTokenNotForTopic for every device [A-RESP].
- A push certificate stored for the other environment: BadDeviceToken for every device [A-RESP].
- A service account of another Firebase project: SENDER_ID_MISMATCH for every device [F-ERR].

Each holds the organization with the reason that names the fix; no token is invalidated and no deployment
fails. The right credential releases them and every deployment completes. One genuinely dead token among
999 good ones is invalidated alone, with its reason and the credential's fingerprint.

Each scenario prints its figures (`-s` shows them): tokens invalidated, deployments held, and the time from
the right credential's upload to every deployment Completed, beside the control's: the same rollout with the
right credential from the start, from creation to every deployment Completed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dramatiq
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from models.enums import CredentialKind, Platform, Provider, PushEnvironment, TokenState
from models.statuses import Kind, Status
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.tables import Deployment, Device, ProviderHold, PushCredential
from sandbox import DeviceRegistry, Sandbox, SandboxThread
from sandbox.fleet import Behaviour, Fleet
from sandbox.rollout import StoreCheckIn
from sandbox.tls import MdmPushCertificate, issue_mdm_push_certificate, make_ca, mdm_topic
from tests.helpers import sandbox_settings, wait_until
from workers.actors import Actors, declare_actors
from workers.app import App
from workers.broker import BULK_QUEUE, URGENT_QUEUE
from workers.services.credentials import store_credential

DEVICES = 1_000
ORG = "acme"
APP_PROJECT = "acme-agent-app"  # the Firebase project the devices' agent app is registered in
OTHER_PROJECT = "acme-other-project"
SETTLE_S = 120.0


@dataclass
class Scene:
    registry: DeviceRegistry
    sandbox: Sandbox
    app: App
    actors: Actors
    topic: str  # the topic the Apple fleet enrolled with
    right: MdmPushCertificate
    other_topic: MdmPushCertificate


@pytest.fixture
def scene(pg: Engine, postgres_url: str, tmp_path: Path) -> Iterator[Scene]:
    registry = DeviceRegistry()
    authority = make_ca("mdmq acceptance push CA")
    registry.add_apns_client_ca(authority.certificate)
    topic = mdm_topic()
    right = issue_mdm_push_certificate(registry, topic=topic, ca=authority, days=365)
    other = issue_mdm_push_certificate(registry, topic=mdm_topic(), ca=authority, days=365)
    with SandboxThread(registry, tls=True) as sandbox:
        settings = sandbox_settings(
            sandbox, tmp_path, database_url=postgres_url, broker_url="stub://", database_pool_size=16
        )
        app = App(settings)
        actors = declare_actors(app)
        worker = dramatiq.Worker(app.broker, worker_threads=4, worker_timeout=100)
        worker.start()
        try:
            yield Scene(registry, sandbox, app, actors, topic, right, other)
        finally:
            worker.stop()
            app.close()


def _fleet(scene: Scene, platform: Platform, **where: str) -> Fleet:
    fleet = Fleet(
        scene.registry,
        seed=20,
        size=DEVICES,
        mix={Behaviour.success: 1.0},
        platforms={platform: 1.0},
        apns_topic=scene.topic,
        fcm_project_id=APP_PROJECT,
        **where,  # type: ignore[arg-type]
    )
    fleet.attach(StoreCheckIn(scene.app, ORG), delay_s=(0.001, 0.01), threads=4)
    return fleet


def _roll_out(scene: Scene, fleet: Fleet) -> list[str]:
    with scene.app.session() as s:
        ensure_organization(s, organization_id=ORG)
        add_devices(
            s,
            organization_id=ORG,
            devices=[NewDevice(d.platform, d.token, push_magic=d.push_magic, id=d.id) for d in fleet.devices],
        )
        wanted = [NewDeployment(d.id, Kind.profile, {"profile": "com.example.wifi"}) for d in fleet.devices]
        ids = create_deployments(s, organization_id=ORG, deployments=wanted)
    scene.actors.enqueue_created(ORG, ids, wanted)
    return ids


@dataclass(frozen=True)
class Upload:
    provider: Provider
    kind: CredentialKind
    secret: str = field(repr=False)
    environment: PushEnvironment = PushEnvironment.production


def _upload(scene: Scene, upload: Upload) -> None:
    """An operator's upload (forced: the scenarios change a certificate's topic on purpose); what it
    released is enqueued, as the API does."""
    with scene.app.session() as s:
        ensure_organization(s, organization_id=ORG)
        stored = store_credential(
            s,
            organization_id=ORG,
            provider=upload.provider,
            kind=upload.kind,
            secret=upload.secret,
            environment=upload.environment,
            force=True,
        )
    scene.actors.enqueue_ids(stored.released)


def _settle(scene: Scene) -> None:
    for queue in (URGENT_QUEUE, BULK_QUEUE):
        scene.app.broker.join(queue, timeout=int(SETTLE_S * 1000))


@dataclass(frozen=True)
class Tally:
    statuses: dict[Status, int]
    held: int
    hold_reasons: set[str]
    invalid_tokens: int

    @classmethod
    def of(cls, engine: Engine) -> Tally:
        with Session(engine) as s:
            statuses = {
                Status(status): int(n)
                for status, n in s.exec(
                    select(Deployment.status, func.count()).group_by(col(Deployment.status))
                )
            }
            held = s.exec(select(func.count()).where(col(Deployment.hold_reason).is_not(None))).one()
            reasons = set(s.exec(select(Deployment.hold_reason).distinct()).all()) - {None}
            invalid = s.exec(select(func.count()).where(Device.token_state == TokenState.invalid)).one()
        return cls(statuses, int(held), {str(r) for r in reasons}, int(invalid))


def _all_completed(scene: Scene) -> bool:
    return Tally.of(scene.app.engine).statuses == {Status.completed: DEVICES}


def _fix_and_finish(scene: Scene, fix: Upload, what: str, held: Tally) -> None:
    started = time.monotonic()
    _upload(scene, fix)
    wait_until(lambda: _all_completed(scene), SETTLE_S, f"every deployment Completed after {what}")
    after = Tally.of(scene.app.engine)
    print(  # the scenario's figures, for the note (`pytest -s`)
        json.dumps(
            {
                "scenario": what,
                "held": held.held,
                "tokens_invalidated_while_held": held.invalid_tokens,
                "failed_while_held": sum(
                    n for st, n in held.statuses.items() if st in (Status.failed, Status.error_distributing)
                ),
                "tokens_invalidated": after.invalid_tokens,
                "right_credential_to_all_completed_s": round(time.monotonic() - started, 2),
            }
        )
    )
    assert after.invalid_tokens == 0
    with Session(scene.app.engine) as s:
        assert s.exec(select(ProviderHold)).all() == []


def _assert_held(scene: Scene, ids: list[str], words: str) -> Tally:
    _settle(scene)
    held = Tally.of(scene.app.engine)
    assert held.invalid_tokens == 0, "a wrong credential invalidates no device token"
    assert held.statuses == {Status.queued: len(ids)}, "nothing failed, nothing moved on"
    assert held.held == len(ids)
    [reason] = held.hold_reasons
    assert words in reason, reason
    return held


def _certificate(certificate: MdmPushCertificate, environment: PushEnvironment) -> Upload:
    return Upload(Provider.apns, CredentialKind.apns_certificate, certificate.pem_bundle, environment)


def _service_account(scene: Scene, project_id: str) -> Upload:
    """A service account of `project_id`, known to the FCM emulator."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    email = f"mdmq@{project_id}.iam.gserviceaccount.com"
    scene.registry.add_fcm_service_account(email, key.public_key(), project_id=project_id)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    account = {"type": "service_account", "client_email": email, "private_key": pem, "project_id": project_id}
    return Upload(Provider.fcm, CredentialKind.fcm_service_account, json.dumps(account))


def test_a_certificate_of_another_topic_holds_the_fleet_and_the_renewal_completes_it(scene: Scene) -> None:
    """[A-RESP] DeviceTokenNotForTopic for every device: a new certificate was uploaded, not the renewal."""
    _upload(scene, _certificate(scene.other_topic, PushEnvironment.production))
    with _fleet(scene, Platform.ios, apns_environment="production") as fleet:
        ids = _roll_out(scene, fleet)
        held = _assert_held(scene, ids, "topic")
        right = _certificate(scene.right, PushEnvironment.production)
        _fix_and_finish(scene, right, "wrong topic, then the certificate of the devices' topic", held)


def test_a_certificate_stored_for_the_other_environment_holds_the_fleet_until_fixed(scene: Scene) -> None:
    """[A-RESP] BadDeviceToken for every device: "the token matches the environment" it does not."""
    _upload(scene, _certificate(scene.right, PushEnvironment.production))
    with _fleet(scene, Platform.ios, apns_environment="development") as fleet:
        ids = _roll_out(scene, fleet)
        held = _assert_held(scene, ids, "environment")
        right = _certificate(scene.right, PushEnvironment.sandbox)
        _fix_and_finish(scene, right, "wrong environment, then the devices' environment", held)


def test_a_service_account_of_another_firebase_project_holds_the_fleet_until_fixed(scene: Scene) -> None:
    """[F-ERR] SENDER_ID_MISMATCH for every device: the service account is of another project."""
    _upload(scene, _service_account(scene, OTHER_PROJECT))
    with _fleet(scene, Platform.android) as fleet:
        ids = _roll_out(scene, fleet)
        held = _assert_held(scene, ids, "Firebase project")
        right = _service_account(scene, APP_PROJECT)
        _fix_and_finish(scene, right, "another Firebase project, then the app's project", held)


def test_one_dead_token_among_999_good_ones_is_invalidated_alone(scene: Scene) -> None:
    """One device's token belongs to another topic (an old enrollment): its DeviceTokenNotForTopic is one
    answer among 999 accepted ones, the device's own."""
    _upload(scene, _certificate(scene.right, PushEnvironment.production))
    with _fleet(scene, Platform.ios, apns_environment="production") as fleet:
        stray = fleet.devices[DEVICES // 2]
        scene.registry.add_apns_device(stray.token, topic=mdm_topic(), environment="production")
        ids = _roll_out(scene, fleet)
        wait_until(
            lambda: Tally.of(scene.app.engine).statuses.get(Status.completed) == DEVICES - 1,
            SETTLE_S,
            "every other deployment Completed",
        )
    tally = Tally.of(scene.app.engine)
    assert tally.statuses == {Status.completed: DEVICES - 1, Status.error_distributing: 1}
    assert len(ids) == DEVICES
    with Session(scene.app.engine) as s:
        [dead] = s.exec(select(Device).where(Device.token_state == TokenState.invalid)).all()
        credential = s.exec(select(PushCredential)).one()
        assert s.exec(select(ProviderHold)).all() == [], "the organization is not held"
    assert dead.id == stray.id
    assert (dead.token_invalid_reason, dead.token_invalid_status) == ("DeviceTokenNotForTopic", 400)
    assert dead.token_invalid_fingerprint == credential.fingerprint
    print(json.dumps({"scenario": "one dead token among 999", "tokens_invalidated": tally.invalid_tokens}))


def test_with_the_right_certificate_from_the_start_nothing_is_held_and_all_complete(scene: Scene) -> None:
    """The control beside the scenarios: the same rollout with the right credential from the start. Its
    time is the baseline for the scenarios' time from the right credential to every deployment Completed."""
    _upload(scene, _certificate(scene.right, PushEnvironment.production))
    with _fleet(scene, Platform.ios, apns_environment="production") as fleet:
        started = time.monotonic()
        _roll_out(scene, fleet)
        wait_until(lambda: _all_completed(scene), SETTLE_S, "every deployment Completed")
        took_s = time.monotonic() - started
    tally = Tally.of(scene.app.engine)
    assert (tally.held, tally.invalid_tokens) == (0, 0)
    print(
        json.dumps(
            {
                "scenario": "the right certificate from the start",
                "rollout_to_all_completed_s": round(took_s, 2),
            }
        )
    )
