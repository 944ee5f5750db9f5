"""Providers left idle are closed and built again; a provider's connections are capped; the gauges count both.

Real emulators over TLS, real connections: what is counted open is what the emulator sees open.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
from collections.abc import Callable, Sequence

from prometheus_client import REGISTRY

from sandbox import DeviceRegistry, FaultConfig, Latency, Sandbox
from sandbox.http_server import HttpServer, ServedConnection
from tests.integration.providers.conftest import TOPIC, apns_endpoints, apns_token
from workers.providers.base import Outcome, Push, PushResult
from workers.providers.credentials import AospApiKey, ApnsCertificate, Credential
from workers.providers.factory import ProviderFactory
from workers.providers.http2 import Http2Connection

ORGANIZATION = "org-1"


def wake_ups(registry: DeviceRegistry, count: int) -> list[Push]:
    pushes = []
    for index in range(count):
        token = apns_token()
        registry.add_apns_device(token, topic=TOPIC)
        pushes.append(Push(f"{index:024x}", token=token, push_magic="magic"))
    return pushes


class Opened:
    """The connections an emulator accepted: how many at most at once, and in all."""

    def __init__(self, server: HttpServer) -> None:
        self.peak = 0
        self.total = 0
        self._server = server
        self._count = server.connection_opened
        server.connection_opened = self._opened  # type: ignore[method-assign]

    def _opened(self, connection: ServedConnection) -> None:
        self._count(connection)
        self.total += 1
        self.peak = max(self.peak, len(self._server.connections))

    @property
    def open_now(self) -> int:
        return len(self._server.connections)


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


async def send(factory: ProviderFactory, credential: Credential, pushes: Sequence[Push]) -> list[PushResult]:
    with factory.using(ORGANIZATION, credential) as provider:
        return await provider.send(pushes)


def gauge(name: str, provider: str) -> float:
    return REGISTRY.get_sample_value(name, {"provider": provider}) or 0.0


def test_an_idle_provider_is_closed_and_the_next_push_opens_anew(
    registry: DeviceRegistry, apns_cert: ApnsCertificate
) -> None:
    first, later = wake_ups(registry, 2)

    async def scenario() -> None:
        async with Sandbox(registry, tls=True) as sandbox:
            opened = Opened(sandbox.servers["apns"])
            factory = ProviderFactory(apns_endpoints(sandbox), idle_s=0.2)
            [before] = await send(factory, apns_cert, [first])
            provider = factory.provider_for(ORGANIZATION, apns_cert)
            assert (factory.provider_count, opened.open_now) == (1, 1)

            await until(lambda: opened.open_now == 0, 5, "the idle provider's connection to close")
            assert factory.provider_count == 0

            [after] = await send(factory, apns_cert, [later])
            assert factory.provider_for(ORGANIZATION, apns_cert) is not provider  # built again
            assert (opened.open_now, opened.total) == (1, 2)  # on a connection of its own
            await factory.close()
        assert before.outcome is Outcome.accepted
        assert after.outcome is Outcome.accepted

    asyncio.run(scenario())


def connections_alive() -> int:
    return sum(isinstance(o, Http2Connection) for o in gc.get_objects())


def test_an_evicted_provider_is_freed_without_waiting_for_the_collector(
    registry: DeviceRegistry, apns_cert: ApnsCertificate
) -> None:
    # The automatic collector is off: only the factory's own collection can free the reference cycles a
    # closed provider's connections are held in.
    [push] = wake_ups(registry, 1)

    async def scenario() -> tuple[int, int]:
        async with Sandbox(registry, tls=True) as sandbox:
            factory = ProviderFactory(apns_endpoints(sandbox), idle_s=0.2)
            [result] = await send(factory, apns_cert, [push])
            assert result.outcome is Outcome.accepted
            used = connections_alive()
            await until(lambda: connections_alive() < used, 5, "the evicted connection to be freed")
            await factory.close()
            return used, connections_alive()

    gc.collect()
    before = connections_alive()
    gc.disable()
    try:
        assert asyncio.run(scenario()) == (before + 1, before)
    finally:
        gc.enable()


def test_a_provider_in_use_is_not_evicted(registry: DeviceRegistry, apns_cert: ApnsCertificate) -> None:
    # One connection of one stream, 150 ms an answer: the batch takes some 0.9 s, most of it waiting for the
    # stream, four times the idle limit. Closing the provider meanwhile would fail the pushes still waiting.
    pushes = wake_ups(registry, 6)
    faults = FaultConfig(latency=Latency.fixed(150), max_concurrent_streams=1)

    async def scenario() -> tuple[list[PushResult], float]:
        async with Sandbox(registry, tls=True, apns_faults=faults) as sandbox:
            opened = Opened(sandbox.servers["apns"])
            factory = ProviderFactory(apns_endpoints(sandbox), idle_s=0.2, max_connections=1)
            started = time.monotonic()
            results = await send(factory, apns_cert, pushes)
            took_s = time.monotonic() - started
            assert opened.total == 1  # every push went on the first connection: none was closed under it
            await until(lambda: factory.provider_count == 0, 5, "the provider to be evicted once idle")
            await factory.close()
        return results, took_s

    results, took_s = asyncio.run(scenario())
    assert [r.outcome for r in results] == [Outcome.accepted] * len(pushes)
    assert took_s > 0.8  # longer than the idle limit many times over


def test_the_connections_of_a_credential_stay_under_the_cap(
    registry: DeviceRegistry, apns_cert: ApnsCertificate
) -> None:
    # 8 streams a connection and 1,200 pushes at once, in 6 batches as 6 dispatch chunks would send them:
    # without a cap, as many connections as the pool allows would open.
    pushes = wake_ups(registry, 1_200)
    batches = [pushes[i : i + 200] for i in range(0, len(pushes), 200)]
    faults = FaultConfig(latency=Latency.fixed(20), max_concurrent_streams=8)

    async def peak_with(cap: int) -> tuple[int, set[Outcome]]:
        async with Sandbox(registry, tls=True, apns_faults=faults) as sandbox:
            opened = Opened(sandbox.servers["apns"])
            factory = ProviderFactory(apns_endpoints(sandbox), max_connections=cap)
            answers = await asyncio.gather(*(send(factory, apns_cert, batch) for batch in batches))
            await factory.close()
        return opened.peak, {result.outcome for results in answers for result in results}

    assert asyncio.run(peak_with(2)) == (2, {Outcome.accepted})
    assert asyncio.run(peak_with(6)) == (6, {Outcome.accepted})  # the cap, not the load, stopped at 2


def test_the_gauges_count_providers_and_connections_by_kind(
    registry: DeviceRegistry, apns_cert: ApnsCertificate, aosp_key: AospApiKey
) -> None:
    [push] = wake_ups(registry, 1)
    aosp_token = "aosp-device-0001"
    registry.add_aosp_device(aosp_token)
    android = Push("a1", token=aosp_token)
    names = ("mdmq_push_providers", "mdmq_push_connections", "mdmq_push_providers_evicted_total")
    kinds = ("apns", "aosp")

    def figures() -> dict[tuple[str, str], float]:
        return {(name, kind): gauge(name, kind) for name in names for kind in ("apns", "aosp", "fcm")}

    async def scenario() -> tuple[dict[tuple[str, str], float], ...]:
        async with Sandbox(registry, tls=True) as sandbox:
            endpoints = dataclasses.replace(apns_endpoints(sandbox), aosp=sandbox.aosp_url)
            factory = ProviderFactory(endpoints, idle_s=0.4)
            start = figures()
            await send(factory, apns_cert, [push])
            await send(factory, aosp_key, [android])
            await until(
                lambda: gauge("mdmq_push_connections", "aosp") > start[("mdmq_push_connections", "aosp")],
                5,
                "the connections gauge to count the new connections",
            )
            busy = figures()
            await until(lambda: factory.provider_count == 0, 5, "both providers to be evicted")
            await until(
                lambda: all(
                    gauge("mdmq_push_connections", k) == start[("mdmq_push_connections", k)] for k in kinds
                ),
                5,
                "the closed providers' connections to leave the gauge",
            )
            await factory.close()
            return start, busy, figures()

    start, busy, idle = asyncio.run(scenario())

    def change(figures: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
        return {key: value - start[key] for key, value in figures.items() if value != start[key]}

    assert change(busy) == {
        ("mdmq_push_providers", "apns"): 1,
        ("mdmq_push_providers", "aosp"): 1,
        ("mdmq_push_connections", "apns"): 1,
        ("mdmq_push_connections", "aosp"): 1,
    }
    assert change(idle) == {
        ("mdmq_push_providers_evicted_total", "apns"): 1,
        ("mdmq_push_providers_evicted_total", "aosp"): 1,
    }
