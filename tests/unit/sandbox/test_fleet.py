"""The simulated fleet: seeded identities and mix, each behaviour's reports, real pushes, scheduling, cost."""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest

from models.enums import Platform
from models.reports import TARGETS, Report
from models.statuses import PUSH_UNDELIVERABLE, TERMINAL, Kind, Status
from sandbox import DeviceRegistry, Sandbox
from sandbox.fleet import (
    DEFAULT_MIX,
    DEFAULT_PLATFORMS,
    Answer,
    Behaviour,
    Fleet,
    PendingCommand,
    SimulatedDevice,
    check_in_delay_s,
    expected_status,
)
from sandbox.h2client import H2Client
from sandbox.registry import Provider, TokenState
from sandbox.testing import AOSP_KEY, MDM_BODY, PROJECT, TOPIC, World, in_sandbox
from sandbox.tls import MdmPushCertificate, issue_mdm_push_certificate

WAIT_S = 10.0  # generous bound on waits for the fleet's thread; a pass never comes near it
NO_DELAY = (0.0, 0.0)
LOCKED = "device locked with passcode"
KINDS = list(Kind)

# -- an in-memory check-in server ----------------------------------------------------------------------

Sent = tuple[str, str | None, list[dict[str, Any]] | None]  # report, reason, error chain


@dataclass
class Held:
    device_id: str
    kind: Kind
    status: Status = Status.queued
    reports: list[Sent] = field(default_factory=list)
    postpones: int = 0
    pushes_unanswered: int = 0


class FakeCheckIn:
    """Holds deployments per device and records every report; a status follows `models.reports.TARGETS`."""

    def __init__(self, *, max_postpones: int = 1_000) -> None:
        self.max_postpones = max_postpones
        self.held: dict[str, Held] = {}
        self.checked_in: list[str] = []
        self.lock = threading.Lock()

    def hold(self, device_id: str, kind: Kind) -> str:
        deployment_id = uuid.uuid4().hex[:24]
        self.held[deployment_id] = Held(device_id, kind)
        return deployment_id

    def open(self, device_id: str) -> list[str]:
        return [d for d, held in self.held.items() if held.device_id == device_id and not self._done(held)]

    def _done(self, held: Held) -> bool:
        return held.status in TERMINAL[held.kind]

    def pending(self, device_id: str) -> list[PendingCommand]:
        with self.lock:
            self.checked_in.append(device_id)
            commands = []
            for deployment_id in self.open(device_id):
                self.held[deployment_id].pushes_unanswered = 0
                commands.append(PendingCommand(deployment_id, self.held[deployment_id].kind.value))
            return commands

    def report(self, device_id: str, answers: Sequence[Answer]) -> None:
        with self.lock:
            for answer in answers:
                self._apply(device_id, answer)

    def _apply(self, device_id: str, answer: Answer) -> None:
        held = self.held[answer.deployment_id]
        assert held.device_id == device_id
        held.reports.append((answer.report, answer.reason, answer.error_chain))
        target = TARGETS[held.kind].get(Report(answer.report))
        if target is None or self._done(held):
            return
        held.status = target
        if target in (Status.postponed, Status.waiting_for_startup):
            held.postpones += 1
            if held.postpones >= self.max_postpones:
                held.status = Status.failed

    def reports_of(self, deployment_id: str) -> list[Sent]:
        with self.lock:
            return list(self.held[deployment_id].reports)


class Exploding(FakeCheckIn):
    """Raises in `pending` for some devices, and in `report` for a check-in that answers some deployments."""

    def __init__(self, bad_devices: set[str], bad_deployments: set[str]) -> None:
        super().__init__()
        self.bad_devices = bad_devices
        self.bad_deployments = bad_deployments

    def pending(self, device_id: str) -> list[PendingCommand]:
        if device_id in self.bad_devices:
            raise RuntimeError(f"store unavailable for {device_id}")
        return super().pending(device_id)

    def report(self, device_id: str, answers: Sequence[Answer]) -> None:
        for answer in answers:
            if answer.deployment_id in self.bad_deployments:
                raise RuntimeError(f"report refused for {answer.deployment_id}")
        super().report(device_id, answers)


# -- helpers -------------------------------------------------------------------------------------------


@pytest.fixture
def registry() -> DeviceRegistry:
    return DeviceRegistry()


def only(behaviour: Behaviour) -> Mapping[Behaviour, float]:
    return {behaviour: 1.0}


def push(registry: DeviceRegistry, device: SimulatedDevice) -> None:
    """What an emulator does once it accepted a push for the device."""
    registry.accept_push(
        device.token, push_id=str(uuid.uuid4()), payload={"mdm": "wake"}, expires_at=time.time() + 3600
    )


def identities(fleet: Fleet) -> list[tuple[str, Platform, str, str | None, Behaviour]]:
    return [(d.id, d.platform, d.token, d.push_magic, d.behaviour) for d in fleet.devices]


def first(fleet: Fleet, behaviour: Behaviour) -> SimulatedDevice:
    return next(d for d in fleet.devices if d.behaviour is behaviour)


def hold_every_kind(server: FakeCheckIn, device: SimulatedDevice) -> dict[Kind, str]:
    return {kind: server.hold(device.id, kind) for kind in KINDS}


# -- identities and the mix ----------------------------------------------------------------------------


def test_a_seed_gives_the_same_fleet() -> None:
    one = Fleet(DeviceRegistry(), seed=42, size=500)
    same = Fleet(DeviceRegistry(), seed=42, size=500)
    other = Fleet(DeviceRegistry(), seed=43, size=500)

    assert identities(one) == identities(same)
    assert {d.id for d in one.devices}.isdisjoint(d.id for d in other.devices)
    assert [d.behaviour for d in one.devices] != [d.behaviour for d in other.devices]


def test_another_mix_keeps_ids_platforms_and_tokens() -> None:
    default = Fleet(DeviceRegistry(), seed=5, size=300)
    all_locked = Fleet(DeviceRegistry(), seed=5, size=300, mix=only(Behaviour.locked_for_good))

    assert [(i, p, t, m) for i, p, t, m, _ in identities(default)] == [
        (i, p, t, m) for i, p, t, m, _ in identities(all_locked)
    ]
    assert {d.behaviour for d in all_locked.devices} == {Behaviour.locked_for_good}


def test_a_namespace_changes_the_ids_and_nothing_else() -> None:
    plain = Fleet(DeviceRegistry(), seed=5, size=300)
    first = Fleet(DeviceRegistry(), seed=5, size=300, namespace="run-1")
    second = Fleet(DeviceRegistry(), seed=5, size=300, namespace="run-2")

    assert {d.id for d in first.devices}.isdisjoint(d.id for d in second.devices)
    assert {d.id for d in first.devices}.isdisjoint(d.id for d in plain.devices)
    for fleet in (first, second):
        assert [(p, t, m, b) for _, p, t, m, b in identities(fleet)] == [
            (p, t, m, b) for _, p, t, m, b in identities(plain)
        ]


TOKEN_SHAPES = {
    Platform.ios: re.compile(r"^[0-9a-f]{64}$"),
    Platform.macos: re.compile(r"^[0-9a-f]{64}$"),
    Platform.android: re.compile(r"^[A-Za-z0-9_-]{22}:APA91b[A-Za-z0-9_-]{134}$"),
    Platform.aosp: re.compile(r"^[0-9a-f]{22}$"),
}
UUID_SHAPE = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$")


def test_identities_look_like_the_real_ones(registry: DeviceRegistry) -> None:
    fleet = Fleet(registry, seed=1, size=400)

    assert {d.platform for d in fleet.devices} == set(Platform)
    assert len({d.id for d in fleet.devices}) == len({d.token for d in fleet.devices}) == 400
    for device in fleet.devices:
        assert re.fullmatch(r"[0-9a-f]{24}", device.id)
        assert TOKEN_SHAPES[device.platform].match(device.token)
        if device.platform in (Platform.ios, Platform.macos):
            assert device.push_magic is not None
            assert UUID_SHAPE.match(device.push_magic)
        else:
            assert device.push_magic is None
        assert fleet.device(device.id) is device


PROVIDERS = {
    Platform.ios: Provider.apns,
    Platform.macos: Provider.apns,
    Platform.android: Provider.fcm,
    Platform.aosp: Provider.aosp,
}


def test_devices_are_registered_as_their_behaviour_says(registry: DeviceRegistry) -> None:
    fleet = Fleet(registry, seed=2, size=2_000, platforms=DEFAULT_PLATFORMS, apns_topic=TOPIC)

    for device in fleet.devices:
        known = registry.device(device.token)
        assert known is not None
        assert known.provider is PROVIDERS[device.platform]
        assert known.online is (device.behaviour is not Behaviour.offline)
        gone = device.behaviour is Behaviour.unregistered
        assert known.state is (TokenState.unregistered if gone else TokenState.valid)
        if known.provider is Provider.apns:
            assert known.topic == TOPIC


def within(observed: int, n: int, share: float) -> bool:
    """Within five standard deviations of the binomial mean: a seeded draw that misses is a real bug."""
    return abs(observed - n * share) <= 5 * math.sqrt(n * share * (1 - share)) + 1


def test_the_mix_and_the_platform_shares_hold_on_10_000_devices() -> None:
    fleet = Fleet(DeviceRegistry(), seed=2024, size=10_000)
    behaviours = Counter(d.behaviour for d in fleet.devices)
    platforms = Counter(d.platform for d in fleet.devices)

    for behaviour, share in DEFAULT_MIX.items():
        assert within(behaviours[behaviour], 10_000, share), (behaviour, behaviours[behaviour])
    for platform, share in DEFAULT_PLATFORMS.items():
        assert within(platforms[platform], 10_000, share), (platform, platforms[platform])
    assert behaviours[Behaviour.success] > 0.7 * 10_000


def test_a_custom_mix_is_normalised_and_missing_behaviours_never_drawn() -> None:
    fleet = Fleet(DeviceRegistry(), seed=3, size=4_000, mix={Behaviour.success: 3, Behaviour.offline: 1})
    counts = Counter(d.behaviour for d in fleet.devices)

    assert set(counts) == {Behaviour.success, Behaviour.offline}
    assert within(counts[Behaviour.offline], 4_000, 0.25)


@pytest.mark.parametrize(
    "mix", [{Behaviour.success: -1.0, Behaviour.offline: 2.0}, {Behaviour.success: 0.0}, {}]
)
def test_a_mix_without_a_positive_weight_or_with_a_negative_one_is_refused(
    mix: Mapping[Behaviour, float],
) -> None:
    with pytest.raises(ValueError, match="weights"):
        Fleet(DeviceRegistry(), seed=1, size=1, mix=mix)


# -- expected statuses ---------------------------------------------------------------------------------

C, F, E, R, U = "Completed", "Failed", "Error distributing", "Ready", "User acknowledged"
EXPECTED = {  # profile, app, security action, message — as an admin reads them
    Behaviour.success: (C, C, R, U),
    Behaviour.not_now_then_success: (C, C, R, U),
    Behaviour.locked_for_good: (F, F, R, U),
    Behaviour.device_error: (F, F, F, F),
    Behaviour.agent_not_started: (F, F, R, U),
    Behaviour.unregistered: (E, E, F, F),
    Behaviour.offline: (F, F, F, F),
    Behaviour.invalid_payload: (F, F, F, F),
}


def test_expected_status_of_every_behaviour_and_kind() -> None:
    assert set(EXPECTED) == set(Behaviour)
    for behaviour, statuses in EXPECTED.items():
        for kind, status in zip(KINDS, statuses, strict=True):
            assert expected_status(behaviour, kind) == status
            assert expected_status(behaviour, kind.value) in set(Status)


# -- what each behaviour reports -----------------------------------------------------------------------

SUCCESS: dict[Kind, list[str]] = {
    Kind.profile: ["fetched", "processing", "acknowledged"],
    Kind.app: ["fetched", "processing", "acknowledged"],
    Kind.security_action: ["fetched", "accepted", "acknowledged"],
    Kind.message: ["fetched", "notification_shown", "user_acknowledged"],
}
NOT_NOW: list[Sent] = [("fetched", None, None), ("not_now", LOCKED, None)]


def bare(reports: list[str]) -> list[Sent]:
    return [(report, None, None) for report in reports]


def first_wake(behaviour: Behaviour, kind: Kind) -> list[Sent]:
    """What a device of `behaviour` reports for a `kind` command the first time it is woken."""
    postponable = kind in (Kind.profile, Kind.app)
    if behaviour in (Behaviour.not_now_then_success, Behaviour.locked_for_good) and postponable:
        return NOT_NOW
    if behaviour is Behaviour.agent_not_started and postponable:
        return [("agent_not_started", None, None)]
    return bare(SUCCESS[kind])


@pytest.mark.parametrize(
    "behaviour",
    [
        Behaviour.success,
        Behaviour.not_now_then_success,
        Behaviour.locked_for_good,
        Behaviour.agent_not_started,
    ],
)
@pytest.mark.parametrize("platform", list(Platform))
def test_one_wake_up_answers_every_pending_command(
    registry: DeviceRegistry, behaviour: Behaviour, platform: Platform
) -> None:
    server = FakeCheckIn()
    with Fleet(registry, seed=9, size=1, mix=only(behaviour), platforms={platform: 1}) as fleet:
        [device] = fleet.devices
        deployments = hold_every_kind(server, device)
        fleet.attach(server, delay_s=NO_DELAY)
        push(registry, device)
        assert fleet.idle(WAIT_S)
        counters = fleet.counters

    assert counters.check_ins == 1
    assert server.checked_in == [device.id]
    for kind, deployment_id in deployments.items():
        assert server.reports_of(deployment_id) == first_wake(behaviour, kind), kind
    assert device.times_woken == 1


def error_text(sent: Sent) -> str:
    chain = sent[2]
    assert chain
    return str(chain[0]["USEnglishDescription"])


def test_device_errors_carry_an_apple_error_chain_per_kind(registry: DeviceRegistry) -> None:
    server = FakeCheckIn()
    with Fleet(registry, seed=11, size=60, mix=only(Behaviour.device_error)) as fleet:
        held = {device.id: hold_every_kind(server, device) for device in fleet.devices}
        fleet.attach(server, delay_s=NO_DELAY)
        for device in fleet.devices:
            push(registry, device)
        assert fleet.idle(WAIT_S)

    texts: dict[Kind, set[str]] = {kind: set() for kind in KINDS}
    for deployments in held.values():
        for kind, deployment_id in deployments.items():
            fetched, error = server.reports_of(deployment_id)
            assert fetched == ("fetched", None, None)
            assert error[0] == "error"
            texts[kind].add(error_text(error))
    profile_chain = server.reports_of(next(iter(held.values()))[Kind.profile])[1][2]
    assert profile_chain is not None
    assert [(e["ErrorCode"], e["ErrorDomain"]) for e in profile_chain] == [
        (4001, "MCInstallationErrorDomain"),
        (2003, "MCPayloadErrorDomain"),
    ]
    assert profile_chain[1]["USEnglishDescription"] == "The Wi-Fi payload has an invalid password."
    assert texts[Kind.app] == {
        "App Store license not available",
        "The app is no longer available in the App Store",
    }
    assert texts[Kind.security_action] == {"Passcode is required"}
    assert len(texts[Kind.message]) == 1


def test_the_app_error_a_device_reports_follows_the_seed() -> None:
    def causes(seed: int) -> list[str]:
        registry, server = DeviceRegistry(), FakeCheckIn()
        with Fleet(registry, seed=seed, size=30, mix=only(Behaviour.device_error)) as fleet:
            held = [server.hold(device.id, Kind.app) for device in fleet.devices]
            fleet.attach(server, delay_s=NO_DELAY)
            for device in fleet.devices:
                push(registry, device)
            assert fleet.idle(WAIT_S)
        return [error_text(server.reports_of(deployment_id)[1]) for deployment_id in held]

    assert causes(21) == causes(21)


def test_an_invalid_payload_is_reported_as_a_command_format_error(registry: DeviceRegistry) -> None:
    server = FakeCheckIn()
    with Fleet(registry, seed=4, size=1, mix=only(Behaviour.invalid_payload)) as fleet:
        deployments = hold_every_kind(server, fleet.devices[0])
        fleet.attach(server, delay_s=NO_DELAY)
        push(registry, fleet.devices[0])
        assert fleet.idle(WAIT_S)

    for deployment_id in deployments.values():
        fetched, error = server.reports_of(deployment_id)
        assert fetched == ("fetched", None, None)
        assert error[:2] == ("error", "CommandFormatError")
        assert "malformed" in error_text(error)


def wake(registry: DeviceRegistry, fleet: Fleet, device: SimulatedDevice) -> None:
    push(registry, device)
    assert fleet.idle(WAIT_S)


def test_not_now_the_first_k_wake_ups_then_success(registry: DeviceRegistry) -> None:
    server = FakeCheckIn()
    mix = only(Behaviour.not_now_then_success)
    with Fleet(registry, seed=6, size=1, mix=mix, not_now_times=2) as fleet:
        [device] = fleet.devices
        profile = server.hold(device.id, Kind.profile)
        fleet.attach(server, delay_s=NO_DELAY)
        for _ in range(3):
            wake(registry, fleet, device)

    assert server.reports_of(profile) == NOT_NOW + NOT_NOW + bare(SUCCESS[Kind.profile])
    assert server.held[profile].status == Status.completed
    assert device.times_woken == 3


def test_locked_for_good_postpones_every_time_but_a_lock_still_works(registry: DeviceRegistry) -> None:
    server = FakeCheckIn()
    with Fleet(registry, seed=6, size=1, mix=only(Behaviour.locked_for_good)) as fleet:
        [device] = fleet.devices
        deployments = hold_every_kind(server, device)
        fleet.attach(server, delay_s=NO_DELAY)
        for _ in range(4):
            wake(registry, fleet, device)

    assert server.reports_of(deployments[Kind.profile]) == NOT_NOW * 4
    assert server.held[deployments[Kind.security_action]].status == Status.ready
    assert server.held[deployments[Kind.message]].status == Status.user_acknowledged


# -- a small pipeline: the statuses the fleet dictates are the ones it produces ------------------------


MAX_PUSHES = 3  # unanswered wake-ups before a deployment fails
MAX_POSTPONES = 4  # more than the fleet's not_now_times


def dispatch_round(registry: DeviceRegistry, server: FakeCheckIn, fleet: Fleet) -> bool:
    """Push every device with open deployments, as mdmq's dispatch and re-push sweep would."""
    woke = False
    for device in fleet.devices:
        open_ids = server.open(device.id)
        if not open_ids:
            continue
        known = registry.device(device.token)
        if known is None or known.state is not TokenState.valid:  # the provider's 410 / 404
            for deployment_id in open_ids:
                held = server.held[deployment_id]
                held.status = PUSH_UNDELIVERABLE[held.kind]
            continue
        for deployment_id in open_ids:
            server.held[deployment_id].pushes_unanswered += 1
        push(registry, device)
        woke = True
    return woke


def give_up_on_silent_devices(server: FakeCheckIn) -> None:
    for held in server.held.values():
        if held.status not in TERMINAL[held.kind] and held.pushes_unanswered >= MAX_PUSHES:
            held.status = Status.failed


def test_every_deployment_ends_in_the_status_its_device_dictates(registry: DeviceRegistry) -> None:
    server = FakeCheckIn(max_postpones=MAX_POSTPONES)
    with Fleet(registry, seed=77, size=400) as fleet:
        for device in fleet.devices:
            hold_every_kind(server, device)
        fleet.attach(server, delay_s=(0.0, 0.002))
        for _ in range(10):
            if not dispatch_round(registry, server, fleet):
                break
            assert fleet.idle(WAIT_S)
            give_up_on_silent_devices(server)
        counters = fleet.counters

    assert counters.failures == 0
    assert {d.behaviour for d in fleet.devices} == set(Behaviour)
    for held in server.held.values():
        behaviour = fleet.device(held.device_id).behaviour
        assert held.status == expected_status(behaviour, held.kind), (behaviour, held.kind, held.reports)
        if behaviour in (Behaviour.unregistered, Behaviour.offline):
            assert held.reports == []


# -- real pushes through the emulators -----------------------------------------------------------------


@dataclass
class Outcome:
    statuses: dict[Behaviour, int] = field(default_factory=dict)
    pending_devices: list[str] = field(default_factory=list)


GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JSON = [("content-type", "application/json")]


@dataclass(frozen=True)
class Pushing:
    """What a pusher needs: the running sandbox (over TLS), the world's credentials, and the MDM push
    certificate APNs knows."""

    sandbox: Sandbox
    world: World
    certificate: MdmPushCertificate

    async def connect(self, url: str, *, present_certificate: bool = False) -> H2Client:
        tls = self.sandbox.tls
        assert tls is not None, "the sandbox serves TLS"
        host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
        context = tls.client_context(self.certificate.issued if present_certificate else None)
        return await H2Client.connect(host, int(port), ssl_context=context, server_hostname=host)


async def push_apns(pushing: Pushing, devices: Sequence[SimulatedDevice]) -> Outcome:
    # MDM pushes are certificate-only, to the topic in the certificate's UID [A-MDMPUSH].
    client = await pushing.connect(pushing.sandbox.apns_url, present_certificate=True)
    outcome = Outcome()
    for device in devices:
        headers = [
            ("apns-topic", pushing.certificate.topic),
            ("apns-push-type", "mdm"),
            ("apns-priority", "10"),
            ("apns-id", str(uuid.uuid4())),
        ]
        response = await client.request("POST", f"/3/device/{device.token}", headers, MDM_BODY)
        outcome.statuses[device.behaviour] = response.status
    await client.close()
    return outcome


async def push_fcm(pushing: Pushing, devices: Sequence[SimulatedDevice]) -> Outcome:
    world = pushing.world
    client, outcome = await pushing.connect(pushing.sandbox.fcm_url), Outcome()
    form = urlencode({"grant_type": GRANT, "assertion": world.google_assertion()}).encode()
    granted = await client.request(
        "POST", "/token", [("content-type", "application/x-www-form-urlencoded")], form
    )
    headers = [("authorization", f"Bearer {json.loads(granted.body)['access_token']}"), *JSON]
    for device in devices:
        body = json.dumps({"message": {"token": device.token, "data": {"mdm": "wake"}}}).encode()
        response = await client.request("POST", f"/v1/projects/{PROJECT}/messages:send", headers, body)
        outcome.statuses[device.behaviour] = response.status
    await client.close()
    return outcome


async def push_aosp(pushing: Pushing, devices: Sequence[SimulatedDevice]) -> Outcome:
    client, outcome = await pushing.connect(pushing.sandbox.aosp_url), Outcome()
    for device in devices:
        body = json.dumps({"to": [device.token], "data": {"mdm": "wake"}}).encode()
        response = await client.request("POST", f"/push?api_key={AOSP_KEY}", JSON, body)
        outcome.statuses[device.behaviour] = response.status
        if device.behaviour is Behaviour.offline:
            status = await client.request(
                "GET", f"/pushes/{json.loads(response.body)['id']}?api_key={AOSP_KEY}"
            )
            outcome.pending_devices = json.loads(status.body)["push"]["pending_devices"]
    await client.close()
    return outcome


PUSHERS = {Platform.ios: push_apns, Platform.android: push_fcm, Platform.aosp: push_aosp}
REJECTED = {
    Platform.ios: 410,
    Platform.android: 404,
    Platform.aosp: 400,
}  # Unregistered / UNREGISTERED / NO_RECIPIENTS
TRIO = {Behaviour.success: 1.0, Behaviour.unregistered: 1.0, Behaviour.offline: 1.0}


@pytest.mark.parametrize("platform", list(PUSHERS))
def test_a_real_push_wakes_a_device_and_never_one_that_is_gone_or_offline(
    world: World, platform: Platform
) -> None:
    server = FakeCheckIn()
    fleet = Fleet(
        world.registry,
        seed=13,
        size=30,
        mix=TRIO,
        platforms={platform: 1},
        apns_topic=TOPIC,
        fcm_project_id=PROJECT,
    )
    targets = [first(fleet, behaviour) for behaviour in TRIO]
    held = {device.behaviour: server.hold(device.id, Kind.profile) for device in targets}
    outcome = Outcome()
    certificate = issue_mdm_push_certificate(world.registry, topic=TOPIC)  # before the sandbox starts

    async def body(sandbox: Sandbox) -> None:
        nonlocal outcome
        outcome = await PUSHERS[platform](Pushing(sandbox, world, certificate), targets)

    with fleet:
        fleet.attach(server)
        in_sandbox(world, tls=True)(body)
        assert fleet.idle(WAIT_S)
        counters = fleet.counters

    assert outcome.statuses == {
        Behaviour.success: 200,
        Behaviour.unregistered: REJECTED[platform],
        Behaviour.offline: 200,
    }
    assert server.held[held[Behaviour.success]].status == Status.completed
    assert server.reports_of(held[Behaviour.unregistered]) == server.reports_of(held[Behaviour.offline]) == []
    assert server.checked_in == [targets[0].id]
    assert counters.check_ins == 1
    if platform is Platform.aosp:  # accepted for a device that never comes online: Pushy keeps it pending
        assert outcome.pending_devices == [targets[2].token]


def test_an_offline_device_forced_online_still_never_reports(registry: DeviceRegistry) -> None:
    server = FakeCheckIn()
    with Fleet(registry, seed=8, size=1, mix=only(Behaviour.offline), platforms={Platform.aosp: 1}) as fleet:
        [device] = fleet.devices
        profile = server.hold(device.id, Kind.profile)
        fleet.attach(server, delay_s=NO_DELAY)
        push(registry, device)
        delivered = registry.come_online(device.token)
        assert fleet.idle(WAIT_S)
        counters = fleet.counters

    assert len(delivered) == 1
    assert counters.ignored == 1
    assert counters.check_ins == 0
    assert server.reports_of(profile) == []


# -- scheduling ----------------------------------------------------------------------------------------


def test_pushes_before_the_check_in_join_it(registry: DeviceRegistry) -> None:
    server = FakeCheckIn()
    with Fleet(registry, seed=3, size=1, mix=only(Behaviour.success)) as fleet:
        [device] = fleet.devices
        hold_every_kind(server, device)
        fleet.attach(server, delay_s=(0.2, 0.2))  # the second push comes microseconds after the first
        push(registry, device)
        push(registry, device)
        assert fleet.idle(WAIT_S)
        counters = fleet.counters

    assert (counters.deliveries, counters.coalesced, counters.check_ins) == (2, 1, 1)
    assert counters.reports == 12


class Gate(FakeCheckIn):
    """Holds the first check-in inside `pending` until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.overlapped = False  # a second check-in began while the first was held
        self.second = threading.Event()

    def pending(self, device_id: str) -> list[PendingCommand]:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(WAIT_S)
        elif not self.release.is_set():
            self.overlapped = True
            self.second.set()
        return super().pending(device_id)


@pytest.mark.parametrize("threads", [1, 4])
def test_a_push_during_a_check_in_gets_a_check_in_of_its_own_after_it(
    registry: DeviceRegistry, threads: int
) -> None:
    server = Gate()
    with Fleet(registry, seed=3, size=1, mix=only(Behaviour.success)) as fleet:
        [device] = fleet.devices
        fleet.attach(server, delay_s=NO_DELAY, threads=threads)
        push(registry, device)
        assert server.entered.wait(WAIT_S)
        push(registry, device)
        assert not fleet.idle(0)
        # What must not happen has a bounded time to show itself: a second check-in while the first is held.
        assert not server.second.wait(0.3)
        server.release.set()
        assert fleet.idle(WAIT_S)
        counters = fleet.counters

    assert (counters.check_ins, counters.coalesced) == (2, 0)
    assert device.times_woken == 2
    assert not server.overlapped, "one device is never checked in by two threads at once"


def test_delays_follow_the_seed_and_stay_within_bounds() -> None:
    ids = [f"{i:024x}" for i in range(200)]
    delays = [check_in_delay_s(3, device_id, 1, (0.005, 0.05)) for device_id in ids]

    assert delays == [check_in_delay_s(3, device_id, 1, (0.005, 0.05)) for device_id in ids]
    assert delays != [check_in_delay_s(4, device_id, 1, (0.005, 0.05)) for device_id in ids]
    assert delays != [check_in_delay_s(3, device_id, 2, (0.005, 0.05)) for device_id in ids]
    assert all(0.005 <= delay < 0.05 for delay in delays)
    assert max(delays) - min(delays) > 0.03  # spread over the range, not bunched
    assert check_in_delay_s(3, ids[0], 1, (0.0, 0.0)) == 0.0


def test_every_pushed_device_checks_in_once(registry: DeviceRegistry) -> None:
    server = FakeCheckIn()
    with Fleet(registry, seed=3, size=200, mix=only(Behaviour.success)) as fleet:
        fleet.attach(server, delay_s=(0.0, 0.03))
        for device in fleet.devices:
            push(registry, device)
        assert fleet.idle(WAIT_S)

    assert sorted(server.checked_in) == sorted(d.id for d in fleet.devices)


def test_close_stops_the_thread_and_later_pushes_do_nothing(registry: DeviceRegistry) -> None:
    server = FakeCheckIn()
    fleet = Fleet(registry, seed=3, size=2, mix=only(Behaviour.success))
    fleet.attach(server, delay_s=(30.0, 30.0))
    push(registry, fleet.devices[0])  # due long after the close
    fleet.close()
    push(registry, fleet.devices[1])
    fleet.close()

    assert fleet.idle(0)
    assert server.checked_in == []
    assert not [t for t in threading.enumerate() if t.name == "mdmq-fleet"]
    with pytest.raises(RuntimeError):
        fleet.attach(server)


def test_failing_check_ins_are_logged_and_counted_and_the_rest_go_on(
    registry: DeviceRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    with Fleet(registry, seed=12, size=3, mix=only(Behaviour.success)) as fleet:
        broken, partly, fine = fleet.devices
        server = Exploding({broken.id}, set())
        hold_every_kind(server, broken)
        partly_held = hold_every_kind(server, partly)
        server.bad_deployments.add(partly_held[Kind.app])
        fine_held = hold_every_kind(server, fine)
        fleet.attach(server, delay_s=NO_DELAY)
        with caplog.at_level(logging.DEBUG, logger="sandbox.fleet"):
            for device in fleet.devices:
                wake(registry, fleet, device)
        counters = fleet.counters

    assert counters.check_ins == 3
    assert counters.failures == 2
    assert counters.reports == 3 * 4  # `fine`'s; `partly`'s check-in failed as a whole
    assert all(server.held[d].reports == [] for d in partly_held.values())
    assert all(server.held[d].status in TERMINAL[server.held[d].kind] for d in fine_held.values())
    assert broken.id in caplog.text
    assert partly_held[Kind.app] in caplog.text
    assert_no_secret(fleet, caplog.text)


def test_an_unknown_kind_is_counted_and_skipped(registry: DeviceRegistry) -> None:
    class OddServer(FakeCheckIn):
        def pending(self, device_id: str) -> list[PendingCommand]:
            return [PendingCommand("f" * 24, "firmware"), *super().pending(device_id)]

    server = OddServer()
    with Fleet(registry, seed=12, size=1, mix=only(Behaviour.success)) as fleet:
        profile = server.hold(fleet.devices[0].id, Kind.profile)
        fleet.attach(server, delay_s=NO_DELAY)
        wake(registry, fleet, fleet.devices[0])
        counters = fleet.counters

    assert counters.failures == 1
    assert server.held[profile].status == Status.completed


# -- secrets and cost ----------------------------------------------------------------------------------


def assert_no_secret(fleet: Fleet, text: str) -> None:
    for device in fleet.devices:
        assert device.token not in text
        assert device.push_magic is None or device.push_magic not in text


def test_no_token_or_push_magic_in_a_repr_or_a_log_line(
    registry: DeviceRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    server = FakeCheckIn()
    with caplog.at_level(logging.DEBUG), Fleet(registry, seed=10, size=40) as fleet:
        for device in fleet.devices:
            hold_every_kind(server, device)
        fleet.attach(server, delay_s=NO_DELAY)
        for device in fleet.devices:
            if device.behaviour is not Behaviour.unregistered:
                push(registry, device)
        assert fleet.idle(WAIT_S)
        shown = " ".join([repr(fleet), str(fleet.counters), *(f"{d!r} {d}" for d in fleet.devices)])

    assert fleet.devices[0].id in shown
    assert_no_secret(fleet, shown)
    assert_no_secret(fleet, caplog.text)


def test_100_000_devices_fit_in_100_mb() -> None:
    tracemalloc.start()
    try:
        fleet = Fleet(DeviceRegistry(), seed=100, size=100_000)
        kept_mb = tracemalloc.get_traced_memory()[0] / 2**20
    finally:
        tracemalloc.stop()

    assert len(fleet.devices) == 100_000
    assert kept_mb < 100, f"100,000 devices keep {kept_mb:.1f} MB with their registry"


@pytest.fixture(autouse=True)
def no_fleet_thread_left_behind() -> Iterator[None]:
    yield
    assert not [t for t in threading.enumerate() if t.name == "mdmq-fleet" and t.is_alive()]
