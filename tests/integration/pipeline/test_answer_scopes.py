"""Whose problem an answer is, through the real providers and the sandbox's TLS servers, on PostgreSQL.

A certificate of the wrong topic or environment makes APNs refuse *every* device with an answer that also
means "dead token" ([A-RESP] DeviceTokenNotForTopic, BadDeviceToken); the safety valve holds the
organization instead of invalidating its fleet, a genuinely dead token among working ones is still the
device's, too few answers decide nothing, and a hold ends with the right credential or with one push that
goes through once the cause was fixed elsewhere.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from models.enums import CredentialKind, CredentialStatus, Platform, Provider, PushEnvironment, TokenState
from models.ids import new_id
from models.reports import Report
from models.statuses import Kind, Status
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.store.dispatch import hold_for_credential
from models.store.holds import NewHold, hold_provider, release_provider
from models.tables import Deployment, Device, ProviderHold, PushCredential
from models.types import utcnow
from sandbox import DeviceRegistry, Sandbox, SandboxThread, Storm
from sandbox.tls import MdmPushCertificate, issue_mdm_push_certificate, mdm_topic
from scheduler.holds import probe_holds_job
from tests.helpers import sandbox_settings
from workers.actors import Actors, declare_actors
from workers.app import App
from workers.policy import RetryPolicy
from workers.services.credentials import store_credential
from workers.services.dispatch import DEFAULT_VALVE, DispatchSummary, dispatch_chunk, judge, load, send
from workers.services.reports import DeviceReport, record_device_report

POLICY = RetryPolicy.defaults()
ORG = "acme"


@dataclass
class World:
    registry: DeviceRegistry
    actors: Actors
    topic: str  # the topic the fleet enrolled with
    right: MdmPushCertificate  # the organization's push certificate, of the fleet's topic
    other: MdmPushCertificate  # a push certificate of another topic (a new one, not a renewal)
    sandbox: Sandbox

    @property
    def app(self) -> App:
        return self.actors.app


@pytest.fixture
def world(pg: Engine, postgres_url: str, tmp_path: Path) -> Iterator[World]:
    registry = DeviceRegistry()
    topic = mdm_topic()
    right = issue_mdm_push_certificate(registry, topic=topic, days=365)
    other = issue_mdm_push_certificate(registry, topic=mdm_topic(), ca=right.ca, days=365)
    with SandboxThread(registry, tls=True) as sandbox:
        settings = sandbox_settings(sandbox, tmp_path, database_url=postgres_url, broker_url="stub://")
        app = App(settings)
        yield World(registry, declare_actors(app), topic, right, other, sandbox)
        app.close()


def _upload(world: World, certificate: MdmPushCertificate, environment: PushEnvironment) -> list[str]:
    with world.app.session() as s:
        ensure_organization(s, organization_id=ORG)
        stored = store_credential(
            s,
            organization_id=ORG,
            provider=Provider.apns,
            kind=CredentialKind.apns_certificate,
            secret=certificate.pem_bundle,
            environment=environment,
            force=True,
        )
        return stored.released


def _fleet(
    world: World, count: int, *, environment: str = "production", topic: str | None = None
) -> list[str]:
    """`count` iPhones enrolled with the fleet's topic (or `topic`) in `environment`; one profile each."""
    tokens = [secrets.token_hex(32) for _ in range(count)]
    for token in tokens:
        world.registry.add_apns_device(token, topic=topic or world.topic, environment=environment)
    with world.app.session() as s:
        ensure_organization(s, organization_id=ORG)
        devices = add_devices(
            s,
            organization_id=ORG,
            devices=[
                NewDevice(Platform.ios, token, push_magic=f"magic-{i}") for i, token in enumerate(tokens)
            ],
        )
        return create_deployments(
            s, organization_id=ORG, deployments=[NewDeployment(d, Kind.profile) for d in devices]
        )


def _dispatch(world: World, ids: list[str]) -> DispatchSummary:
    return dispatch_chunk(world.app.session, world.app.gateway, ids, policy=POLICY)


def _deployments(world: World) -> list[Deployment]:
    with Session(world.app.engine) as s:
        return list(s.exec(select(Deployment)))


def _invalid_tokens(world: World) -> list[Device]:
    with Session(world.app.engine) as s:
        return list(s.exec(select(Device).where(Device.token_state == TokenState.invalid)))


def _hold(world: World) -> ProviderHold | None:
    with Session(world.app.engine) as s:
        return s.get(ProviderHold, (ORG, Provider.apns))


def _credential(world: World) -> PushCredential:
    with Session(world.app.engine) as s:
        return s.exec(select(PushCredential)).one()


def test_a_certificate_of_another_topic_holds_the_organization_and_invalidates_nothing(world: World) -> None:
    """[A-RESP] DeviceTokenNotForTopic for every device: the certificate's topic is not the fleet's."""
    _upload(world, world.other, PushEnvironment.production)
    ids = _fleet(world, 30)

    summary = _dispatch(world, ids)

    assert summary.held == 30
    assert summary.undeliverable == 0
    assert _invalid_tokens(world) == []
    deployments = _deployments(world)
    assert {d.status for d in deployments} == {Status.queued}
    assert all(d.hold_reason and "topic" in d.hold_reason for d in deployments), deployments[0].hold_reason
    hold = _hold(world)
    assert hold is not None
    assert (hold.scope, hold.provider_reason) == ("config", "DeviceTokenNotForTopic")
    assert _credential(world).status is CredentialStatus.valid, "the certificate itself is fine"

    released = _upload(world, world.right, PushEnvironment.production)

    assert sorted(released) == sorted(ids)
    assert _hold(world) is None
    again = _dispatch(world, ids)
    assert again.accepted == 30
    assert again.held == 0


def test_a_certificate_of_the_other_environment_holds_with_the_environment_named(world: World) -> None:
    """[A-RESP] BadDeviceToken: "verify that the token matches the environment" — a production certificate
    for a fleet enrolled in the sandbox (development) environment gets it for every device."""
    _upload(world, world.right, PushEnvironment.production)
    ids = _fleet(world, 25, environment="development")

    summary = _dispatch(world, ids)

    assert summary.held == 25
    assert _invalid_tokens(world) == []
    reason = _deployments(world)[0].hold_reason or ""
    assert "environment" in reason, reason
    released = _upload(world, world.right, PushEnvironment.sandbox)
    assert sorted(released) == sorted(ids)
    assert _dispatch(world, ids).accepted == 25


def test_one_dead_token_among_working_ones_is_the_devices_own(world: World) -> None:
    """One token enrolled under another topic among 39 good ones: 1 of 40 answers (2.5%) is the device's."""
    _upload(world, world.right, PushEnvironment.production)
    good = _fleet(world, 39)
    [stray] = _fleet(world, 1, topic=mdm_topic())

    summary = _dispatch(world, [*good, stray])

    assert summary.accepted == 39
    assert summary.held == 0
    [dead] = _invalid_tokens(world)
    assert (dead.token_invalid_reason, dead.token_invalid_status) == ("DeviceTokenNotForTopic", 400)
    assert dead.token_invalid_fingerprint == _credential(world).fingerprint
    assert dead.token_invalid_ambiguous is True
    by_id = {d.id: d for d in _deployments(world)}
    assert by_id[stray].status is Status.error_distributing
    assert {by_id[i].status for i in good} == {Status.queued}
    assert _hold(world) is None


def test_too_few_answers_decide_nothing_and_the_pushes_go_again(world: World) -> None:
    """Five answers of a credential that serves 60 devices: too few to tell whose the dead token is."""
    _upload(world, world.right, PushEnvironment.production)
    _fleet(world, 55)  # devices the credential serves, not in this chunk
    chunk = _fleet(world, 4)
    [stray] = _fleet(world, 1, topic=mdm_topic())

    summary = _dispatch(world, [*chunk, stray])

    assert summary.accepted == 4
    assert summary.retry is not None
    assert summary.retry.deployment_ids == [stray]
    assert _invalid_tokens(world) == []
    assert _hold(world) is None
    assert {d.id: d.status for d in _deployments(world)}[stray] is Status.queued


def test_a_hold_fixed_elsewhere_is_released_by_the_scheduled_push(world: World) -> None:
    """[A-RESP] TopicDisallowed is the organization's configuration: held, the certificate stays valid; once
    APNs takes pushes again, the probe's one push releases the hold."""
    _upload(world, world.right, PushEnvironment.production)
    ids = _fleet(world, 10)
    sandbox = world.sandbox
    sandbox.apns_faults.start_storm(Storm("TopicDisallowed"))

    assert _dispatch(world, ids).held == 10
    hold = _hold(world)
    assert hold is not None
    assert hold.scope == "config"
    assert hold.probe_at is not None
    assert _credential(world).status is CredentialStatus.valid
    assert probe_holds_job(world.actors, hold.probe_at - timedelta(seconds=1)) == 0, "not before its time"
    assert probe_holds_job(world.actors, hold.probe_at) == 0, "still refused"
    tried = _hold(world)
    assert tried is not None
    assert tried.probe_failures == 1
    assert tried.last_probe_result == "TopicDisallowed"
    assert tried.probe_at is not None
    assert tried.probe_at > hold.probe_at

    sandbox.apns_faults.stop_storm()
    assert probe_holds_job(world.actors, tried.probe_at) == 1

    assert _hold(world) is None
    assert {d.hold_reason for d in _deployments(world)} == {None}
    assert _dispatch(world, ids).accepted == 10


def test_a_refused_certificate_is_marked_invalid_and_released_when_it_works_again(world: World) -> None:
    """[A-RESP] BadCertificate is the credential's: marked invalid and held; a probe that goes through
    makes it valid again."""
    _upload(world, world.right, PushEnvironment.production)
    ids = _fleet(world, 10)
    sandbox = world.sandbox
    sandbox.apns_faults.start_storm(Storm("BadCertificate"))
    assert _dispatch(world, ids).held == 10
    assert _credential(world).status is CredentialStatus.invalid
    hold = _hold(world)
    assert hold is not None
    assert hold.scope == "credential"
    assert hold.probe_at is not None
    sandbox.apns_faults.stop_storm()

    assert probe_holds_job(world.actors, hold.probe_at + timedelta(seconds=1)) == 1

    assert _credential(world).status is CredentialStatus.valid
    assert _dispatch(world, ids).accepted == 10


def test_a_retrys_dead_token_answer_is_logged_with_the_window_it_was_judged_on(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A retry's dead-token answer is judged on the window, which counts the device's first answer already
    (it is not written again): the warning counts what the verdict was taken on."""
    _upload(world, world.right, PushEnvironment.production)
    _fleet(world, 55)  # devices the credential serves: too many for one answer to judge
    chunk = _fleet(world, 4)
    [stray] = _fleet(world, 1, topic=mdm_topic())
    first = _dispatch(world, [*chunk, stray])  # the window: 4 accepted, 1 dead
    assert first.retry is not None
    caplog.clear()

    with caplog.at_level(logging.WARNING, logger="workers.services.dispatch"):
        dispatch_chunk(world.app.session, world.app.gateway, [stray], policy=POLICY, failures=1)

    judged = [m for r in caplog.records if "answers in the credential's window" in (m := r.getMessage())]
    assert len(judged) == 1
    assert judged[0].startswith("1 of 5 answers"), judged[0]


def test_one_device_retried_again_and_again_never_holds_its_organization(world: World) -> None:
    """An undecided dead-token answer goes again with the retries, to the same device: each retry is
    judged on the window but adds nothing to it, so twenty-five retries of one device are still one answer
    of one device, not twenty-five. Once the credential's other devices have answered, the next retry
    judges it the device's own."""
    _upload(world, world.right, PushEnvironment.production)
    others = _fleet(world, 55)
    chunk = _fleet(world, 4)
    [stray] = _fleet(world, 1, topic=mdm_topic())
    first = _dispatch(world, [*chunk, stray])
    assert first.retry is not None
    assert first.retry.deployment_ids == [stray]

    for failures in range(1, 26):  # as the delayed retries carry it
        again = dispatch_chunk(
            world.app.session, world.app.gateway, [stray], policy=POLICY, failures=failures
        )
        assert again.held == 0
        assert again.retry is not None
        assert again.retry.deployment_ids == [stray]
    assert _hold(world) is None
    assert _invalid_tokens(world) == []

    assert _dispatch(world, others).accepted == 55
    last = dispatch_chunk(world.app.session, world.app.gateway, [stray], policy=POLICY, failures=26)
    assert last.retry is None
    [dead] = _invalid_tokens(world)
    assert dead.token_invalid_reason == "DeviceTokenNotForTopic"
    assert _hold(world) is None


def test_a_chunk_taken_again_after_its_worker_died_counts_each_dead_token_once(world: World) -> None:
    """A worker judged a chunk's answers and died before recording them; its message is delivered again.
    By then the devices that took their push have checked in, so only the dead tokens' deployments are
    still Queued and pushed again: counted a second time, 8 dead of 40 working (17%) would become 16 of 56
    (29%) and hold the organization. Counted once, they are the devices' own."""
    _upload(world, world.right, PushEnvironment.production)
    good = _fleet(world, 40)
    strays = _fleet(world, 8, topic=mdm_topic())
    loaded = load(world.app.session, [*good, *strays], policy=POLICY, now=utcnow())
    for answered in send(world.app.gateway, loaded):
        judge(world.app.session, answered, DEFAULT_VALVE)  # then SIGKILL: nothing recorded

    again = _dispatch(world, strays)

    assert again.held == 0
    assert _hold(world) is None
    assert sorted(d.id for d in _invalid_tokens(world)) == sorted(_device_ids(world, strays))
    assert {d.id: d.status for d in _deployments(world) if d.id in strays} == dict.fromkeys(
        strays, Status.error_distributing
    )


def test_dead_tokens_are_judged_once_no_other_device_is_left_to_answer(world: World) -> None:
    """The fault suite's SIGKILL: a worker sent a chunk's pushes and was killed before it wrote their
    answers to the window; its devices took their push and checked in before the message came again. The
    credential serves 20 devices, but its window can only ever hold 10 + 2 answers: the eight lost ones
    never come again. Waiting for 20 would push the two dead tokens again and again until their deadline,
    Queued all the while; with no other device left to answer, they are judged on what there is."""
    _upload(world, world.right, PushEnvironment.production)
    answered = _fleet(world, 10)
    lost = _fleet(world, 8)
    strays = _fleet(world, 2, topic=mdm_topic())
    assert _dispatch(world, answered).accepted == 10  # the window: 10 live answers
    loaded = load(world.app.session, [*lost, *strays], policy=POLICY, now=utcnow())
    send(world.app.gateway, loaded)  # then SIGKILL: no answer written, nothing recorded
    _check_in(world, [*answered, *lost])

    again = _dispatch(world, [*lost, *strays])  # the message, delivered again

    assert again.claimed == 2, "only the dead tokens' deployments were still Queued"
    assert again.retry is None, "judged, not sent again"
    assert again.held == 0
    assert _hold(world) is None
    assert sorted(d.id for d in _invalid_tokens(world)) == sorted(_device_ids(world, strays))
    assert {d.id: d.status for d in _deployments(world) if d.id in strays} == dict.fromkeys(
        strays, Status.error_distributing
    )


def test_a_dead_token_waits_while_another_device_still_has_a_push_coming(world: World) -> None:
    """The same window of 12 answers, but one device of the credential still has a profile Queued: its
    answer may yet come, so the dead tokens go again later, undecided."""
    _upload(world, world.right, PushEnvironment.production)
    answered = _fleet(world, 10)
    lost = _fleet(world, 7)
    [waiting] = _fleet(world, 1)
    strays = _fleet(world, 2, topic=mdm_topic())
    assert _dispatch(world, answered).accepted == 10
    send(world.app.gateway, load(world.app.session, [*lost, *strays], policy=POLICY, now=utcnow()))
    _check_in(world, [*answered, *lost])

    again = _dispatch(world, strays)

    assert again.retry is not None
    assert sorted(again.retry.deployment_ids) == sorted(strays)
    assert _invalid_tokens(world) == []
    assert _hold(world) is None

    assert _dispatch(world, [waiting]).accepted == 1
    _check_in(world, [waiting])
    last = dispatch_chunk(world.app.session, world.app.gateway, strays, policy=POLICY, failures=1)
    assert last.retry is None
    assert sorted(d.id for d in _invalid_tokens(world)) == sorted(_device_ids(world, strays))


def test_only_dead_token_answers_hold_the_organization_when_no_other_device_is_left(world: World) -> None:
    """A rollout to two devices of a credential that serves 32, the others with nothing queued (their
    profiles done long ago): both answer DeviceTokenNotForTopic, and no other device will answer. No live
    answer ever came through the credential; a certificate of another topic answers so for every device
    [A-RESP], so the organization is held, and no token is touched."""
    _upload(world, world.right, PushEnvironment.production)
    _check_in(world, _fleet(world, 30))
    strays = _fleet(world, 2, topic=mdm_topic())

    summary = _dispatch(world, strays)

    assert summary.held == 2
    assert _invalid_tokens(world) == []
    assert _hold(world) is not None


def _check_in(world: World, deployment_ids: list[str]) -> None:
    """Their devices checked in and installed the profile."""
    with world.app.session() as s:
        for deployment_id in deployment_ids:
            applied = record_device_report(s, DeviceReport(deployment_id, Report.acknowledged), policy=POLICY)
            assert applied.applied, applied.refused


def _device_ids(world: World, deployment_ids: list[str]) -> list[str]:
    with Session(world.app.engine) as s:
        return [d.device_id for d in s.exec(select(Deployment).where(col(Deployment.id).in_(deployment_ids)))]


def test_a_hold_released_while_a_chunk_was_in_flight_is_not_made_again(world: World) -> None:
    """The chunk read a standing hold; before it held its deployments, the probe (or an operator) released
    it. The chunk goes again, unheld, rather than holding them under no hold the probe knows of."""
    _upload(world, world.right, PushEnvironment.production)
    ids = _fleet(world, 5)
    now = utcnow()
    with world.app.session() as s:
        hold = NewHold(ORG, Provider.apns, "config", "held for the test", "TopicDisallowed", "f")
        hold_provider(s, hold=hold, probe_at=now, now=now)
    calls = 0

    @contextmanager
    def releasing_before_the_hold() -> Iterator[Session]:
        nonlocal calls
        calls += 1
        if calls == 2:  # after the claim, before the hold's own transaction
            with world.app.session() as s:
                release_provider(s, organization_id=ORG, provider=Provider.apns)
        with world.app.session() as s:
            yield s

    summary = dispatch_chunk(releasing_before_the_hold, world.app.gateway, ids, policy=POLICY)

    assert summary.held == 0
    assert summary.retry is not None
    assert sorted(summary.retry.deployment_ids) == sorted(ids)
    assert {d.hold_reason for d in _deployments(world)} == {None}
    assert _hold(world) is None
    assert _dispatch(world, ids).accepted == 5


def test_a_revoked_credential_that_works_again_is_released_and_stays_released(world: World) -> None:
    """The certificate watch marks a refused credential revoked and holds its organization; once the fix is
    made elsewhere, the probe's push goes through and the credential is valid again, so the next dispatch
    sends instead of holding anew."""
    _upload(world, world.right, PushEnvironment.production)
    ids = _fleet(world, 5)
    now = utcnow()
    with world.app.session() as s:
        credential = s.exec(select(PushCredential)).one()
        credential.status = CredentialStatus.revoked
        s.add(credential)
        hold = NewHold(ORG, Provider.apns, "credential", "refused at the check", None, credential.fingerprint)
        hold_provider(s, hold=hold, probe_at=now, now=now)
        hold_for_credential(s, organization_id=ORG, provider=Provider.apns, reason=hold.reason)

    assert probe_holds_job(world.actors, now) == 1

    assert _credential(world).status is CredentialStatus.valid
    assert _dispatch(world, ids).accepted == 5


def test_a_stored_token_key_is_replaced_by_a_certificate_without_a_topic_change(world: World) -> None:
    """A stored .p8 key's topic was typed, never one devices enrolled with: uploading the organization's
    MDM push certificate in its place is no topic change (no 409)."""
    with world.app.session() as s:
        ensure_organization(s, organization_id=ORG)
        s.add(
            PushCredential(
                id=new_id(),
                organization_id=ORG,
                provider=Provider.apns,
                kind=CredentialKind.apns_token,
                secret="-",
                fingerprint="-",
                topic="com.example.agent",
            )
        )
    with world.app.session() as s:
        stored = store_credential(
            s,
            organization_id=ORG,
            provider=Provider.apns,
            kind=CredentialKind.apns_certificate,
            secret=world.right.pem_bundle,
        )
    assert stored.credential.topic == world.topic
