"""A simulated fleet an operator enrolls and drives from outside, against a running `mdmq sandbox`:

- `fleet_rows` — the devices of a seed as rows of a JSON Lines file `mdmq devices import` reads. The tokens
  are ones the stand-alone sandbox takes as it is (open registration): a device's token is live unless its
  behaviour is `unregistered`, whose token carries the provider's dead-token prefix. Each row's label
  `behaviour:<name>` says how the device answers; Apple devices enroll with the push certificate's topic.
- `SimulatedDevices` — the devices checking in, as an MDM check-in server relays them: it reads the pushes
  that reached a device from the sandbox's control route (`sandbox.control`), asks mdmq's API for each woken
  device's Queued deployments and posts the reports its behaviour dictates (`sandbox.fleet.planned_reports`),
  one check-in per device at a time, until stopped.

The default mix holds only behaviours that settle without the retry policy's waits (NotNow, a device that
never comes online, an agent that never starts wait minutes to days by default), so that a rollout to it
finishes in minutes. Dead tokens (`unregistered`) are left out of it too: among an organization's first
answers the safety valve cannot judge them yet, and pushes them again after the policy's push wait (ten
minutes for a profile); `fleet_rows(mix=...)` takes them.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
from cryptography import x509
from cryptography.x509.oid import NameOID

from models.enums import Platform, Provider
from models.statuses import Kind
from sandbox import aosp, apns, fcm
from sandbox.fleet import (
    APNS_TOPIC,
    DEFAULT_PLATFORMS,
    Behaviour,
    SimulatedDevice,
    _make_devices,
    planned_reports,
)

log = logging.getLogger(__name__)

OPERATOR_MIX: Mapping[Behaviour, float] = MappingProxyType(
    {Behaviour.success: 0.94, Behaviour.device_error: 0.04, Behaviour.invalid_payload: 0.02}
)
LABEL_PREFIX = "behaviour:"
DEAD_PREFIXES: Mapping[Provider, str] = MappingProxyType(
    {
        Provider.apns: apns.UNREGISTERED_PREFIX,
        Provider.fcm: fcm.UNREGISTERED_PREFIX,
        Provider.aosp: aosp.FAILED_PREFIX,
    }
)
APPLE = frozenset({Platform.ios, Platform.macos})
NEVER_CHECK_IN = frozenset({Behaviour.unregistered, Behaviour.offline})
POLL_S = 0.2
PAGE = 1_000  # Queued deployments asked per check-in: a device holds few


# -- the fleet file ----------------------------------------------------------------------------------------


def certificate_topic(pem: bytes) -> str:
    """The MDM topic of a push certificate: its subject's UID [A-MDMPUSH]."""
    uids = x509.load_pem_x509_certificate(pem).subject.get_attributes_for_oid(NameOID.USER_ID)
    if not uids:
        raise ValueError("the push certificate has no subject UID: it is no MDM push certificate")
    return str(uids[0].value)


def fleet_rows(
    *, devices: int, seed: int, topic: str = APNS_TOPIC, mix: Mapping[Behaviour, float] = OPERATOR_MIX
) -> Iterator[dict[str, Any]]:
    """One import row per simulated device of `seed`, in the order drawn."""
    for device in _make_devices(seed, devices, DEFAULT_PLATFORMS, mix):
        yield _row(device, topic)


def _row(device: SimulatedDevice, topic: str) -> dict[str, Any]:
    row: dict[str, Any] = {"id": device.id, "platform": device.platform.value, "token": _token(device)}
    if device.platform in APPLE:
        row |= {"pushMagic": device.push_magic, "topic": topic}
    return row | {"labels": [f"{LABEL_PREFIX}{device.behaviour.value}"]}


def _token(device: SimulatedDevice) -> str:
    """The device's token; a dead one's with the prefix the open sandbox answers as dead, same length."""
    if device.behaviour is not Behaviour.unregistered:
        return device.token
    prefix = DEAD_PREFIXES[device.provider]
    return prefix + device.token[len(prefix) :]


@dataclass(frozen=True)
class FleetDevice:
    id: str
    behaviour: Behaviour


def read_fleet(path: Path) -> dict[str, FleetDevice]:
    """The devices of a fleet file by token (APNs tokens in lower case, as the emulator keeps them)."""
    devices: dict[str, FleetDevice] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            row = json.loads(line)
            behaviours = [label.removeprefix(LABEL_PREFIX) for label in row.get("labels", [])]
            behaviour = next(
                (Behaviour(b) for b in behaviours if b in Behaviour.__members__), Behaviour.success
            )
            token = row["token"].lower() if row["platform"] in {p.value for p in APPLE} else row["token"]
            devices[token] = FleetDevice(row["id"], behaviour)
    return devices


# -- the devices checking in -------------------------------------------------------------------------------


@dataclass
class Tally:
    check_ins: int = 0
    reports: int = 0
    refused: int = 0  # reports the API listed as refused (late, duplicated…)
    failures: int = 0  # a request that failed: the check-in is lost, as a device's failed one is


class SimulatedDevices:
    """The fleet's devices checking in over HTTP when the sandbox delivers them a push."""

    def __init__(
        self,
        *,
        api: str,
        token: str,
        organization_id: str,
        control: str,
        fleet: Mapping[str, FleetDevice],
        threads: int = 8,
    ) -> None:
        headers = {"authorization": f"Bearer {token}"}
        self._api = httpx.Client(base_url=api.rstrip("/"), headers=headers, timeout=60)
        self._control = httpx.Client(base_url=control.rstrip("/"), timeout=30)
        self._prefix = f"/v1/organizations/{organization_id}"
        self._fleet = fleet
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="mdmq-device")
        self._lock = threading.Lock()
        self._busy: set[str] = set()  # device ids checking in now
        self._again: set[str] = set()  # pushed while checking in: once more afterwards
        self.tally = Tally()

    def run(self, stop: threading.Event) -> Tally:
        """Check in woken devices until `stop` is set; what they did."""
        after = 0  # pushes delivered before the devices started count too: a woken device checks in
        try:
            while not stop.wait(POLL_S):
                after = self._poll(after)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._api.close()
            self._control.close()
        return self.tally

    def _poll(self, after: int) -> int:
        try:
            answer = self._control.get("/deliveries", params={"after": after}).json()
        except (httpx.HTTPError, ValueError) as e:
            log.warning("devices: the sandbox's control route did not answer: %s", type(e).__name__)
            return after
        for delivery in answer["deliveries"]:
            device = self._fleet.get(delivery["token"])
            if device is not None and device.behaviour not in NEVER_CHECK_IN:
                self._wake(device)
        return int(answer["next"])

    def _wake(self, device: FleetDevice) -> None:
        with self._lock:
            if device.id in self._busy:
                self._again.add(device.id)
                return
            self._busy.add(device.id)
        self._pool.submit(self._check_in_until_quiet, device)

    def _check_in_until_quiet(self, device: FleetDevice) -> None:
        while True:
            self._check_in(device)
            with self._lock:
                if device.id not in self._again:
                    self._busy.discard(device.id)
                    return
                self._again.discard(device.id)

    def _check_in(self, device: FleetDevice) -> None:
        try:
            reports = [
                report for deployment in self._queued(device) for report in self._reports(device, deployment)
            ]
            if reports:
                answer = self._api.post(f"{self._prefix}/device-reports", json={"reports": reports})
                answer.raise_for_status()
                refused = len(answer.json()["data"]["refused"])
            else:
                refused = 0
        except (httpx.HTTPError, ValueError, KeyError) as e:
            log.warning("devices: the check-in of device %s failed: %s", device.id, e)
            with self._lock:
                self.tally.failures += 1
            return
        with self._lock:
            self.tally.check_ins += 1
            self.tally.reports += len(reports)
            self.tally.refused += refused

    def _queued(self, device: FleetDevice) -> list[dict[str, Any]]:
        params: dict[str, str | int] = {"device": device.id, "status": "Queued", "limit": PAGE}
        answer = self._api.get(f"{self._prefix}/deployments", params=params)
        answer.raise_for_status()
        items: list[dict[str, Any]] = answer.json()["data"]["items"]
        return items

    def _reports(self, device: FleetDevice, deployment: Mapping[str, Any]) -> list[dict[str, Any]]:
        planned = planned_reports(device.behaviour, Kind(deployment["kind"]), postpone=False)
        return [
            {
                "deviceId": device.id,
                "deploymentId": deployment["id"],
                "report": p.report.value,
                "reason": p.reason,
                "errorChain": None if p.error_chain is None else [dict(entry) for entry in p.error_chain],
            }
            for p in planned
        ]
