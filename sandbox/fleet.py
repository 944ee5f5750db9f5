"""A simulated device fleet: devices that get the emulators' pushes, check in, and report with a seeded mix.

Used by `mdmq demo`, the acceptance tests and the benchmarks::

    fleet = Fleet(registry, seed=7, size=10_000)      # registers every device with the emulators
    fleet.attach(checkin)                             # check in when a push reaches a device
    ...                                               # mdmq pushes; devices report through `checkin`
    fleet.idle(timeout_s=30)                          # every scheduled check-in has run
    expected_status(device.behaviour, "profile")      # what the console should show in the end
    fleet.close()

Everything a device is and does follows from the seed: ids, platforms, tokens, push magic, behaviours, the
check-in delays and the error each failing device reports. Ids, platforms and tokens come from their own
random streams, so a different behaviour mix keeps the same devices.

Devices are plain slots dataclasses; one background thread keeps a heap of due check-ins, so 100,000
devices cost memory for their strings and no thread of their own.

A wake-up serves every queued deployment: the device asks `pending()` once per check-in and answers each
command. Pushes that arrive while a check-in is already scheduled join it.

Kinds that cannot be postponed: a security action or a message has no `Postponed` or `Waiting for startup`
status (`models.reports.TARGETS` has no `not_now` or `agent_not_started` for them), and the device does not
send what cannot apply: a lock works on a locked phone, and a security action or message is carried out by
the MDM stack itself, not the agent app. So `locked_for_good`, `not_now_then_success` and `agent_not_started`
devices complete those kinds as `success` devices do.

AOSP: an online device gets its push from `DeviceRegistry.accept_push` at once, so the fleet never needs
`come_online`; an `offline` device never comes online, so its pushes stay in the provider's
`pending_devices` until they expire.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType, TracebackType
from typing import Any, Protocol, Self

from models.enums import PLATFORM_PROVIDER, Platform, Provider
from models.reports import TARGETS, Report
from models.statuses import PUSH_UNDELIVERABLE, Kind, Status
from sandbox.registry import Delivery, DeviceRegistry

log = logging.getLogger(__name__)

# An MDM topic as Apple names it: the UID of the organization's push certificate [A-MDMPUSH].
APNS_TOPIC = "com.apple.mgmt.External.c82df87c-a7d0-4705-af4e-058da52ecab9"
FCM_PROJECT_ID = "mdmq-sandbox"
LOCKED_REASON = "device locked with passcode"
COMMAND_FORMAT_ERROR = "CommandFormatError"


# -- the check-in interface ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingCommand:
    """A deployment the MDM server holds for a device: `kind` is a `models.statuses.Kind` value."""

    deployment_id: str
    kind: str


@dataclass(frozen=True, slots=True)
class Answer:
    """One device report for one command: a `models.reports.Report` value, with NotNow's reason or Apple's
    ErrorChain."""

    deployment_id: str
    report: str
    reason: str | None = None
    error_chain: list[dict[str, Any]] | None = None


class CheckIn(Protocol):
    """What the MDM check-in server offers a device; mdmq wires it to its store and report actor."""

    def pending(self, device_id: str) -> Sequence[PendingCommand]:
        """The deployments the server holds for `device_id` now (none: an empty sequence)."""
        ...

    def report(self, device_id: str, answers: Sequence[Answer]) -> None:
        """Every answer of one check-in, in the order the device gave them: each command's reports in turn.
        Raising fails the check-in as a whole, as a failed request to a check-in server does."""
        ...


# -- behaviours and what they report -------------------------------------------------------------------


class Behaviour(StrEnum):
    """How a simulated device answers; `expected_status` says where each leaves each kind.

    At a check-in the server hands each command over (`fetched`) before the device answers it, except for
    `agent_not_started`, where nothing on the device is running to fetch it.
    """

    success = "success"
    not_now_then_success = "not_now_then_success"  # NotNow for the fleet's first `not_now_times` wake-ups
    locked_for_good = "locked_for_good"
    device_error = "device_error"
    agent_not_started = "agent_not_started"
    unregistered = "unregistered"  # the app is gone: APNs 410 / FCM 404 UNREGISTERED / AOSP not registered
    offline = "offline"  # accepted by the provider, never comes online
    invalid_payload = "invalid_payload"


# Mostly devices that do the work, a few of each way things go wrong.
DEFAULT_MIX: Mapping[Behaviour, float] = MappingProxyType(
    {
        Behaviour.success: 0.79,
        Behaviour.not_now_then_success: 0.05,
        Behaviour.locked_for_good: 0.03,
        Behaviour.device_error: 0.03,
        Behaviour.agent_not_started: 0.02,
        Behaviour.unregistered: 0.03,
        Behaviour.offline: 0.03,
        Behaviour.invalid_payload: 0.02,
    }
)

DEFAULT_PLATFORMS: Mapping[Platform, float] = MappingProxyType(
    {Platform.ios: 0.45, Platform.macos: 0.10, Platform.android: 0.35, Platform.aosp: 0.10}
)

ErrorChain = tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, slots=True)
class PlannedReport:
    """One report a device sends for one command."""

    report: Report
    reason: str | None = None
    error_chain: ErrorChain | None = None


def _chain(*entries: Mapping[str, Any]) -> ErrorChain:
    return tuple(MappingProxyType(dict(entry)) for entry in entries)


def _apple_error(code: int, domain: str, description: str) -> dict[str, Any]:
    return {
        "ErrorCode": code,
        "ErrorDomain": domain,
        "LocalizedDescription": description,
        "USEnglishDescription": description,
    }


# Per kind, the errors a `device_error` device reports; which one a device picks follows from the seed.
DEVICE_ERRORS: Mapping[Kind, tuple[ErrorChain, ...]] = MappingProxyType(
    {
        Kind.profile: (
            _chain(
                _apple_error(4001, "MCInstallationErrorDomain", "Profile Installation Failed"),
                {
                    "ErrorCode": 2003,
                    "ErrorDomain": "MCPayloadErrorDomain",
                    "USEnglishDescription": "The Wi-Fi payload has an invalid password.",
                },
            ),
        ),
        Kind.app: (
            _chain(_apple_error(12064, "MCMDMErrorDomain", "App Store license not available")),
            _chain(
                _apple_error(12065, "MCMDMErrorDomain", "The app is no longer available in the App Store")
            ),
        ),
        Kind.security_action: (_chain(_apple_error(12010, "MCMDMErrorDomain", "Passcode is required")),),
        Kind.message: (
            _chain(_apple_error(1, "AgentErrorDomain", "Notifications are disabled for the agent app")),
        ),
    }
)

COMMAND_FORMAT_CHAIN: ErrorChain = _chain(
    _apple_error(12001, "MCMDMErrorDomain", "The command is malformed: a required key is missing or invalid")
)


def _steps(*reports: Report) -> tuple[PlannedReport, ...]:
    return tuple(PlannedReport(report) for report in reports)


_SUCCESS: Mapping[Kind, tuple[PlannedReport, ...]] = MappingProxyType(
    {
        Kind.profile: _steps(Report.fetched, Report.processing, Report.acknowledged),
        Kind.app: _steps(Report.fetched, Report.processing, Report.acknowledged),
        Kind.security_action: _steps(Report.fetched, Report.accepted, Report.acknowledged),
        Kind.message: _steps(Report.fetched, Report.notification_shown, Report.user_acknowledged),
    }
)
# The check-in server hands the command over (fetched) before the device can answer NotNow or an error.
_NOT_NOW = (PlannedReport(Report.fetched), PlannedReport(Report.not_now, reason=LOCKED_REASON))
# The agent app is not running: nothing on the device fetched the command.
_AGENT_NOT_STARTED = (PlannedReport(Report.agent_not_started),)
_INVALID_PAYLOAD = (
    PlannedReport(Report.fetched),
    PlannedReport(Report.error, reason=COMMAND_FORMAT_ERROR, error_chain=COMMAND_FORMAT_CHAIN),
)

# Derived from the report vocabulary, so that a kind that learns to postpone changes here too.
_POSTPONABLE = frozenset(kind for kind, targets in TARGETS.items() if Report.not_now in targets)
_AGENT_KINDS = frozenset(kind for kind, targets in TARGETS.items() if Report.agent_not_started in targets)
_NEVER_CHECK_IN = frozenset({Behaviour.unregistered, Behaviour.offline})

_DONE: Mapping[Kind, Status] = MappingProxyType(
    {
        Kind.profile: Status.completed,
        Kind.app: Status.completed,
        Kind.security_action: Status.ready,
        Kind.message: Status.user_acknowledged,
    }
)


def expected_status(behaviour: Behaviour, kind: Kind | str) -> Status:
    """The status a deployment of `kind` ends in on a device that behaves as `behaviour`.

    Assumes mdmq's retry policy lets a deployment be postponed more often than the fleet's `not_now_times`.
    """
    behaviour, kind = Behaviour(behaviour), Kind(kind)
    if behaviour is Behaviour.unregistered:
        return PUSH_UNDELIVERABLE[kind]
    if behaviour in (Behaviour.offline, Behaviour.device_error, Behaviour.invalid_payload):
        return Status.failed
    if behaviour is Behaviour.locked_for_good and kind in _POSTPONABLE:
        return Status.failed  # the retry policy gives up
    if behaviour is Behaviour.agent_not_started and kind in _AGENT_KINDS:
        return Status.failed
    return _DONE[kind]


def planned_reports(
    behaviour: Behaviour, kind: Kind, *, postpone: bool, error_variant: int = 0
) -> tuple[PlannedReport, ...]:
    """What a device answers for one command of `kind` at one check-in.

    `postpone`: a `not_now_then_success` device is still in its NotNow wake-ups. `error_variant` picks one
    of the kind's `DEVICE_ERRORS` (modulo their number).
    """
    if behaviour in _NEVER_CHECK_IN:
        return ()
    postpones = behaviour is Behaviour.locked_for_good or (
        behaviour is Behaviour.not_now_then_success and postpone
    )
    if postpones and kind in _POSTPONABLE:
        return _NOT_NOW
    if behaviour is Behaviour.agent_not_started and kind in _AGENT_KINDS:
        return _AGENT_NOT_STARTED
    if behaviour is Behaviour.device_error:
        chains = DEVICE_ERRORS[kind]
        error = PlannedReport(Report.error, error_chain=chains[error_variant % len(chains)])
        return (PlannedReport(Report.fetched), error)
    if behaviour is Behaviour.invalid_payload:
        return _INVALID_PAYLOAD
    return _SUCCESS[kind]


# -- devices -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class SimulatedDevice:
    """One simulated device. `times_woken` counts its check-ins; only the fleet's thread changes it."""

    id: str
    platform: Platform
    token: str = field(repr=False)
    push_magic: str | None = field(repr=False)  # Apple MDM only
    behaviour: Behaviour
    times_woken: int = 0
    # When its last few check-ins began (wall clock): what an audit of a run shows next to its pushes.
    checked_in_at: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @property
    def provider(self) -> Provider:
        return PLATFORM_PROVIDER[self.platform]


@dataclass(frozen=True, slots=True)
class FleetCounters:
    """What the fleet did so far, for tests and the demo's summary."""

    deliveries: int = 0  # pushes that reached one of the fleet's devices
    coalesced: int = 0  # of those, joined a check-in already scheduled
    ignored: int = 0  # pushes to tokens the fleet does not know, or to devices that never check in
    check_ins: int = 0
    reports: int = 0
    failures: int = 0  # `pending`/`report` raised, or a command of an unknown kind


def _cumulative(weights: Mapping[Any, float], what: str) -> tuple[list[Any], list[float]]:
    """Keys with a positive weight and their cumulative weights, for `random.choices`."""
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"{what} weights must be >= 0")
    keys = [key for key, w in weights.items() if w > 0]
    if not keys:
        raise ValueError(f"{what} weights must include at least one positive weight")
    return keys, list(itertools.accumulate(weights[key] for key in keys))


def _fcm_token(rng: random.Random) -> str:
    """An FCM registration token's shape: an instance id, ':APA91b', and ~134 base64url characters."""
    instance = base64.urlsafe_b64encode(rng.randbytes(16)).decode()[:22]
    body = base64.urlsafe_b64encode(rng.randbytes(101)).decode()[:134]
    return f"{instance}:APA91b{body}"


def _push_token(rng: random.Random, provider: Provider) -> str:
    if provider is Provider.apns:
        return f"{rng.getrandbits(256):064x}"
    if provider is Provider.fcm:
        return _fcm_token(rng)
    return f"{rng.getrandbits(88):022x}"  # Pushy: 22 hex characters


def check_in_delay_s(seed: int, device_id: str, wake: int, delay_s: tuple[float, float]) -> float:
    """The wait between a push and the check-in it causes: seeded per device and wake-up, so the same on
    every run whatever order the pushes arrive in."""
    low, high = delay_s
    return low + (high - low) * _fraction(seed, device_id, wake, "delay")


def _fraction(*parts: object) -> float:
    """A number in [0, 1) that depends only on `parts`: the same on every run, whatever the thread timing."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class _Streams:
    """One random stream per property, so that changing the mix leaves ids, platforms and tokens alone."""

    def __init__(self, seed: int, namespace: str = "") -> None:
        self.ids = random.Random(f"{seed}:{namespace}:ids" if namespace else f"{seed}:ids")
        self.platforms = random.Random(f"{seed}:platforms")
        self.behaviours = random.Random(f"{seed}:behaviours")
        self.tokens = random.Random(f"{seed}:tokens")


def _make_devices(
    seed: int,
    size: int,
    platforms: Mapping[Platform, float],
    mix: Mapping[Behaviour, float],
    namespace: str = "",
) -> list[SimulatedDevice]:
    streams = _Streams(seed, namespace)
    platform_keys, platform_weights = _cumulative(platforms, "platform")
    behaviour_keys, behaviour_weights = _cumulative(mix, "behaviour")
    drawn_platforms = streams.platforms.choices(platform_keys, cum_weights=platform_weights, k=size)
    behaviours = streams.behaviours.choices(behaviour_keys, cum_weights=behaviour_weights, k=size)
    ids: set[str] = set()
    tokens: set[str] = set()
    devices = []
    for platform, behaviour in zip(drawn_platforms, behaviours, strict=True):
        provider = PLATFORM_PROVIDER[platform]
        device_id = _draw_id(streams.ids, ids)
        token = _draw_token(streams.tokens, provider, tokens)
        magic = _push_magic(streams.tokens) if provider is Provider.apns else None
        devices.append(SimulatedDevice(device_id, platform, token, magic, behaviour))
    return devices


# Collisions are all but impossible at these sizes; drawing again keeps lookups by id and token sound.
def _draw_id(rng: random.Random, seen: set[str]) -> str:
    device_id = f"{rng.getrandbits(96):024x}"
    while device_id in seen:
        device_id = f"{rng.getrandbits(96):024x}"
    seen.add(device_id)
    return device_id


def _draw_token(rng: random.Random, provider: Provider, seen: set[str]) -> str:
    token = _push_token(rng, provider)
    while token in seen:
        token = _push_token(rng, provider)
    seen.add(token)
    return token


_UUID_VERSION_4 = (0xF << 76 | 0xC << 60, 0x4 << 76 | 0x8 << 60)  # bits to clear, bits to set


def _push_magic(rng: random.Random) -> str:
    """A random (version 4) UUID in capitals, as Apple devices send PushMagic; `uuid.UUID` is 3x slower."""
    clear, version = _UUID_VERSION_4
    h = f"{rng.getrandbits(128) & ~clear | version:032X}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _register(
    registry: DeviceRegistry,
    device: SimulatedDevice,
    *,
    topic: str,
    project_id: str,
    apns_environment: str | None = None,
) -> None:
    online = device.behaviour is not Behaviour.offline
    if device.provider is Provider.apns:
        # A token works only in the APNs environment it was issued in [A-SEND].
        where = {} if apns_environment is None else {"environment": apns_environment}
        registry.add_apns_device(device.token, topic=topic, online=online, **where)
    elif device.provider is Provider.fcm:
        registry.add_fcm_device(device.token, project_id=project_id, online=online)
    else:
        registry.add_aosp_device(device.token, online=online)
    if device.behaviour is Behaviour.unregistered:
        registry.unregister(device.token)


# -- the fleet -----------------------------------------------------------------------------------------


class Fleet:
    """`size` simulated devices registered in `registry`; `attach()` makes them check in when pushed.

    `mix` and `platforms` are weights (normalised; missing keys weigh 0). `not_now_times` is the k of
    `not_now_then_success`: the first k check-ins answer NotNow. Deterministic for a seed. `namespace`
    changes the device ids only, so that two fleets of one seed (two demo runs) can share a database.
    `apns_topic` and `apns_environment` are those of the push certificate the devices enrolled under (the
    environment the registry's default when None).
    """

    def __init__(
        self,
        registry: DeviceRegistry,
        *,
        seed: int,
        size: int,
        mix: Mapping[Behaviour, float] | None = None,
        platforms: Mapping[Platform, float] = DEFAULT_PLATFORMS,
        not_now_times: int = 2,
        apns_topic: str = APNS_TOPIC,
        fcm_project_id: str = FCM_PROJECT_ID,
        namespace: str = "",
        apns_environment: str | None = None,
    ) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        if not_now_times < 0:
            raise ValueError("not_now_times must be >= 0")
        self.registry = registry
        self.seed = seed
        self.not_now_times = not_now_times
        self._devices = _make_devices(seed, size, platforms, DEFAULT_MIX if mix is None else mix, namespace)
        self._by_token = {device.token: device for device in self._devices}
        self._by_id: dict[str, SimulatedDevice] | None = None
        for device in self._devices:
            _register(
                registry,
                device,
                topic=apns_topic,
                project_id=fcm_project_id,
                apns_environment=apns_environment,
            )
        self._runner: _CheckInRunner | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"Fleet(seed={self.seed}, size={len(self._devices)})"

    @property
    def devices(self) -> Sequence[SimulatedDevice]:
        return self._devices

    def device(self, device_id: str) -> SimulatedDevice:
        """The device with `device_id`; `KeyError` when the fleet has none."""
        if self._by_id is None:  # built on first use: most runs look devices up by token only
            self._by_id = {device.id: device for device in self._devices}
        return self._by_id[device_id]

    def expected_status(self, device_id: str, kind: Kind | str) -> Status:
        return expected_status(self.device(device_id).behaviour, kind)

    def attach(
        self, checkin: CheckIn, *, delay_s: tuple[float, float] = (0.005, 0.05), threads: int = 1
    ) -> None:
        """Check in through `checkin`, `delay_s` (low, high; seeded per wake-up) after a push arrives, on
        `threads` threads; one device is never checked in by two at once."""
        if self._runner is not None or self._closed:
            raise RuntimeError("the fleet is already attached, or closed")
        low, high = delay_s
        if not 0 <= low <= high:
            raise ValueError("delay_s must be (low, high) with 0 <= low <= high")
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self._runner = _CheckInRunner(self, checkin, (low, high), threads)
        self.registry.subscribe(self._on_delivery)
        log.info("fleet of %d devices attached (seed %s)", len(self._devices), self.seed)

    def _on_delivery(self, delivery: Delivery) -> None:
        # Runs on the thread that delivered the push (an emulator's loop): hand over, never block.
        if self._runner is not None:
            self._runner.schedule(self._by_token.get(delivery.token))

    def idle(self, timeout_s: float | None = None) -> bool:
        """Wait until no check-in is scheduled or running; False when `timeout_s` passed first."""
        return self._runner is None or self._runner.wait_idle(timeout_s)

    @property
    def counters(self) -> FleetCounters:
        return self._runner.snapshot() if self._runner is not None else FleetCounters()

    def close(self) -> None:
        """Stop checking in; check-ins still scheduled are dropped. Idempotent."""
        self._closed = True
        self.registry.unsubscribe(self._on_delivery)
        if self._runner is not None:
            self._runner.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- what one device does at one check-in -------------------------------------------------------

    def _check_in(self, device: SimulatedDevice, checkin: CheckIn) -> _Tally:
        """Ask for pending commands and answer them all in one report; failures are logged and counted, not
        raised. The runner has counted this wake-up in `device.times_woken` already."""
        tally = _Tally(check_ins=1)
        try:
            commands = checkin.pending(device.id)
        except Exception:
            log.exception("fleet: pending() failed for device %s", device.id)
            tally.failures += 1
            return tally
        answers = [answer for command in commands for answer in self._answers(device, command, tally)]
        if not answers:
            return tally
        try:
            checkin.report(device.id, answers)
        except Exception:
            log.exception(
                "fleet: the check-in of device %s failed (deployments %s)",
                device.id,
                ", ".join(dict.fromkeys(a.deployment_id for a in answers)),
            )
            tally.failures += 1
            return tally
        tally.reports += len(answers)
        return tally

    def _answers(self, device: SimulatedDevice, command: PendingCommand, tally: _Tally) -> list[Answer]:
        try:
            kind = Kind(command.kind)
        except ValueError:
            log.warning("fleet: deployment %s has unknown kind %r", command.deployment_id, command.kind)
            tally.failures += 1
            return []
        postpone = device.times_woken <= self.not_now_times
        variant = int(_fraction(self.seed, device.id, "error") * 2**16)
        return [
            # A fresh copy of the chain each time: the receiver may keep or change what it gets.
            Answer(
                command.deployment_id,
                planned.report.value,
                planned.reason,
                None if planned.error_chain is None else [dict(entry) for entry in planned.error_chain],
            )
            for planned in planned_reports(device.behaviour, kind, postpone=postpone, error_variant=variant)
        ]


@dataclass(slots=True)
class _Tally:
    check_ins: int = 0
    reports: int = 0
    failures: int = 0


class _CheckInRunner:
    """Threads and a heap of due check-ins; a condition tells waiters when nothing is left to run.

    A push that reaches a device while its check-in runs marks it to go again once that check-in ends, so a
    device's reports never interleave across threads."""

    def __init__(
        self, fleet: Fleet, checkin: CheckIn, delay_s: tuple[float, float], threads: int = 1
    ) -> None:
        self._fleet = fleet
        self._checkin = checkin
        self._delay_s = delay_s
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, SimulatedDevice]] = []
        self._sequence = itertools.count()  # breaks ties between check-ins due at the same moment
        self._scheduled: set[str] = set()  # device ids with a check-in in the heap
        self._outstanding = 0  # scheduled plus running
        self._stopped = False
        self._counters = FleetCounters()
        self._running: set[str] = set()  # device ids being checked in now
        self._again: dict[str, SimulatedDevice] = {}  # pushed while running: check in again afterwards
        self._threads = [
            threading.Thread(target=self._run, name=f"mdmq-fleet-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def schedule(self, device: SimulatedDevice | None) -> None:
        with self._cond:
            if self._stopped:
                return
            if device is None or device.behaviour in _NEVER_CHECK_IN:
                # Unknown token (another test's device) or one that never comes back: nothing checks in.
                self._count(ignored=1)
                return
            if device.id in self._scheduled:
                self._count(deliveries=1, coalesced=1)
                return
            if device.id in self._running:
                if device.id not in self._again:
                    self._again[device.id] = device
                    self._outstanding += 1
                self._count(deliveries=1)
                return
            self._count(deliveries=1)
            self._push(device)

    def _push(self, device: SimulatedDevice) -> None:
        """Into the heap, due after the device's seeded delay; the caller holds the lock."""
        wake = device.times_woken + 1  # the check-in this push causes
        due = time.monotonic() + check_in_delay_s(self._fleet.seed, device.id, wake, self._delay_s)
        heapq.heappush(self._heap, (due, next(self._sequence), device))
        self._scheduled.add(device.id)
        self._outstanding += 1
        self._cond.notify_all()

    def _count(self, **increments: int) -> None:
        current = self._counters
        self._counters = replace(
            current, **{name: getattr(current, name) + n for name, n in increments.items()}
        )

    def _run(self) -> None:
        while (device := self._next_due()) is not None:
            tally = self._fleet._check_in(device, self._checkin)
            with self._cond:
                self._running.discard(device.id)
                again = self._again.pop(device.id, None)
                if again is not None and not self._stopped:
                    self._outstanding -= 1  # _push counts it anew
                    self._push(again)
                self._outstanding = max(self._outstanding - 1, 0)
                self._count(check_ins=tally.check_ins, reports=tally.reports, failures=tally.failures)
                self._cond.notify_all()

    def _next_due(self) -> SimulatedDevice | None:
        """Wait for the earliest check-in to fall due; None once stopped."""
        with self._cond:
            while not self._stopped:
                if not self._heap:
                    self._cond.wait()
                    continue
                wait_s = self._heap[0][0] - time.monotonic()
                if wait_s > 0:
                    self._cond.wait(wait_s)
                    continue
                _, _, device = heapq.heappop(self._heap)
                # Out of the scheduled set before it runs: a push during this check-in gets its own, after it.
                self._scheduled.discard(device.id)
                self._running.add(device.id)
                # Counted under the lock, so that the next wake-up's delay never races this one.
                device.times_woken += 1
                device.checked_in_at = (*device.checked_in_at[-7:], time.time())
                return device
            return None

    def wait_idle(self, timeout_s: float | None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._outstanding == 0 or self._stopped, timeout_s)

    def snapshot(self) -> FleetCounters:
        with self._cond:
            return self._counters

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._scheduled.clear()
            self._outstanding = 0
            self._again.clear()
            self._cond.notify_all()
        for thread in self._threads:
            if threading.current_thread() is not thread:  # close() from a `report` callback
                thread.join()
