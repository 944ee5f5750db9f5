"""The bulk lane shared between organizations, and paced, with real `dramatiq` worker processes (two, on
Redis and PostgreSQL) and the sandbox's APNs: an organization that comes second is served beside the first,
not after it; weights share the lane in their ratio; a paced organization's pushes reach its devices no
faster than its rate in any second, in about n / rate, while an unpaced one runs beside it. Deliveries are
timed where the devices receive them, in the emulator."""

from __future__ import annotations

import secrets
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from config.settings import Settings
from models.enums import CredentialKind, Platform, Provider, PushEnvironment
from models.statuses import Kind
from models.store import NewDeployment, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.store.organizations import set_fair_share
from sandbox import DeviceRegistry, FaultConfig, Latency, Sandbox, SandboxThread
from sandbox.processes import WorkerProcesses
from sandbox.registry import Delivery
from sandbox.tls import Issued, MdmPushCertificate, issue_mdm_push_certificate, make_ca, mdm_topic
from tests.helpers import wait_until, worker_process_settings
from workers.actors import declare_actors
from workers.app import App
from workers.services.credentials import store_credential

pytestmark = pytest.mark.timeout(600)

CHUNK = 50  # deployments per bulk chunk: a rollout of a few thousand is many turns


@dataclass
class World:
    settings: Settings
    registry: DeviceRegistry
    devices: dict[str, list[str]]  # organization → device ids
    owner: dict[str, str]  # push token → organization
    delivered: dict[str, list[float]]  # organization → when each push reached its device
    lock: threading.Lock

    def record(self, delivery: Delivery) -> None:
        with self.lock:
            self.delivered[self.owner[delivery.token]].append(delivery.delivered_at)

    def count(self, organization_id: str) -> int:
        with self.lock:
            return len(self.delivered[organization_id])

    def times(self, organization_id: str) -> list[float]:
        with self.lock:
            return sorted(self.delivered[organization_id])


@pytest.fixture
def world(pg: Engine, postgres_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    """Organizations with `request.param`'s device counts, each with its certificate, on an APNs that
    answers in 40 ms, for real worker processes."""

    def settings(sandbox: Sandbox) -> AbstractContextManager[Settings]:
        return worker_process_settings(
            sandbox, tmp_path, database_url=postgres_url, dispatch_chunk_size=CHUNK
        )

    with fleets_world(request.param, latency_ms=40, settings=settings) as world:
        yield world


@contextmanager
def fleets_world(
    sizes: Mapping[str, int],
    *,
    latency_ms: int,
    settings: Callable[[Sandbox], AbstractContextManager[Settings]],
) -> Iterator[World]:
    """Organizations with `sizes` devices, each with its certificate, stored in the database `settings`
    names, on an APNs that answers in `latency_ms`; every delivery recorded by organization."""
    registry = DeviceRegistry()
    owner: dict[str, str] = {}
    # Certificates first: the sandbox reads its client CAs when it starts.
    ca = make_ca("mdmq test push CA")  # one for all: the sandbox trusts one client CA per listener
    registry.add_apns_client_ca(ca.certificate)
    fleets = {o: _fleet(registry, ca, owner, o, count) for o, count in sizes.items()}
    faults = FaultConfig(latency=Latency.fixed(latency_ms))
    with SandboxThread(registry, tls=True, apns_faults=faults) as sandbox, settings(sandbox) as chosen:
        world = World(chosen, registry, {}, owner, defaultdict(list), threading.Lock())
        app = App(chosen)
        for organization_id, (certificate, tokens) in fleets.items():
            world.devices[organization_id] = _organization(app, organization_id, certificate, tokens)
        app.close()
        registry.subscribe(world.record)
        yield world


def _fleet(
    registry: DeviceRegistry, ca: Issued, owner: dict[str, str], organization_id: str, count: int
) -> tuple[MdmPushCertificate, list[str]]:
    certificate = issue_mdm_push_certificate(registry, topic=mdm_topic(), ca=ca, days=365)
    tokens = [secrets.token_hex(32) for _ in range(count)]
    for token in tokens:
        registry.add_apns_device(token, topic=certificate.topic)
        owner[token] = organization_id
    return certificate, tokens


def _organization(
    app: App, organization_id: str, certificate: MdmPushCertificate, tokens: list[str]
) -> list[str]:
    with app.session() as s:
        ensure_organization(s, organization_id=organization_id)
        store_credential(
            s,
            organization_id=organization_id,
            provider=Provider.apns,
            kind=CredentialKind.apns_certificate,
            secret=certificate.pem_bundle,
            environment=PushEnvironment.production,
        )
        devices = [NewDevice(Platform.ios, t, push_magic="m") for t in tokens]
        return add_devices(s, organization_id=organization_id, devices=devices)


def _profiles(devices: list[str]) -> list[NewDeployment]:
    return [NewDeployment(d, Kind.profile) for d in devices]


@pytest.mark.parametrize("world", [{"acme": 4_000, "beta": 200}], indirect=True)
def test_an_organization_that_comes_second_is_served_beside_the_first(world: World) -> None:
    actors = declare_actors(App(world.settings))
    try:
        with WorkerProcesses(world.settings, processes=2, threads=4, restart_after_s=3_600):
            actors.create("acme", _profiles(world.devices["acme"]))
            actors.create("beta", _profiles(world.devices["beta"]))
            wait_until(lambda: world.count("acme") + world.count("beta") == 4_200, 300, "every push")
    finally:
        actors.app.close()

    acme, beta = world.times("acme"), world.times("beta")
    after_beta = sum(1 for t in acme if t > beta[-1])
    print(
        f"beta's 200 done {beta[-1] - acme[0]:.2f} s after acme's first push, acme's 4,000 after "
        f"{acme[-1] - acme[0]:.2f} s; {after_beta} of acme's pushes came after beta's last"
    )
    # Queue order would put all of beta's 4 chunks behind acme's 80.
    assert after_beta >= 0.5 * len(acme), "beta finished in the first half of acme's rollout"


@pytest.mark.parametrize("world", [{"acme": 2_000, "beta": 2_000}], indirect=True)
def test_weights_share_the_bulk_lane_in_their_ratio(world: World) -> None:
    actors = declare_actors(App(world.settings))
    try:
        with actors.app.session() as s:
            set_fair_share(s, organization_id="acme", weight=2)
        with WorkerProcesses(world.settings, processes=2, threads=4, restart_after_s=3_600):
            actors.create("beta", _profiles(world.devices["beta"]))
            actors.create("acme", _profiles(world.devices["acme"]))
            wait_until(lambda: world.count("acme") == 2_000, 300, "acme's pushes")
            wait_until(lambda: world.count("beta") == 2_000, 300, "beta's pushes")
    finally:
        actors.app.close()

    acme, beta = world.times("acme"), world.times("beta")
    # While both waited: from acme's first push (beta was created first) to acme's last.
    both = [t for t in beta if acme[0] <= t <= acme[-1]]
    ratio = len(acme) / len(both)
    print(f"while both had chunks waiting: acme (weight 2) {len(acme)} pushes, beta (weight 1) {len(both)}")
    assert 1.5 <= ratio <= 2.7, ratio


RATE = 30.0
PACED = 150


@pytest.mark.parametrize("world", [{"calm": PACED, "acme": 3_000}], indirect=True)
def test_a_paced_organization_wakes_no_faster_than_its_rate_beside_an_unpaced_one(world: World) -> None:
    actors = declare_actors(App(world.settings))
    try:
        with actors.app.session() as s:
            set_fair_share(s, organization_id="calm", wake_rate_per_s=RATE)
        with WorkerProcesses(world.settings, processes=2, threads=4, restart_after_s=3_600):
            actors.create("calm", _profiles(world.devices["calm"]))
            actors.create("acme", _profiles(world.devices["acme"]))
            wait_until(lambda: world.count("calm") == PACED, 120, "calm's pushes")
            wait_until(lambda: world.count("acme") == 3_000, 300, "acme's pushes")
    finally:
        actors.app.close()

    calm, acme = world.times("calm"), world.times("acme")
    busiest = max(sum(1 for t in calm if start <= t < start + 1.0) for start in calm)
    took_s = calm[-1] - calm[0]
    print(
        f"calm at {RATE:g}/s: {PACED} pushes in {took_s:.2f} s (n / rate = {PACED / RATE:.2f} s), at most "
        f"{busiest} in any second; acme's 3,000 unpaced in {acme[-1] - acme[0]:.2f} s beside it"
    )
    assert busiest <= 1.2 * RATE
    # The last chunk goes (n - chunk) / rate after the first: 4.9 s here.
    assert PACED / RATE * 0.9 <= took_s <= PACED / RATE * 1.2
    assert acme[-1] < calm[-1], "acme is not held to calm's pace"
