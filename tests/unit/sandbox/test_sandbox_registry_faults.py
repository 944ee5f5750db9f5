"""The registry's presence and pending bookkeeping, and the fault runtime, without any socket."""

from __future__ import annotations

import pytest

from sandbox import Delivery, DeviceRegistry, FaultConfig, FaultRuntime, Garbage, GarbageBurst, Latency, Storm
from sandbox.registry import Provider
from sandbox.testing import FakeClock


def test_pending_push_is_delivered_once_when_the_device_comes_online() -> None:
    clock = FakeClock()
    registry = DeviceRegistry(clock=clock)
    registry.add_aosp_device("t1", online=False)
    seen: list[Delivery] = []
    registry.subscribe(seen.append)
    registry.accept_push("t1", push_id="p1", payload={"a": 1}, expires_at=clock() + 60)
    assert registry.pending_devices("p1") == ["t1"]
    assert [d.push_id for d in registry.come_online("t1")] == ["p1"]
    assert registry.pending_devices("p1") == []
    assert registry.come_online("t1") == []
    assert [(d.provider, d.push_id) for d in seen] == [(Provider.aosp, "p1")]


def test_delivery_repr_hides_token_and_payload() -> None:
    delivery = Delivery(Provider.apns, "secret-token", "id", {"mdm": "magic"}, 0.0)
    assert "secret-token" not in repr(delivery)
    assert "magic" not in repr(delivery)


def test_unknown_token_error_does_not_name_it() -> None:
    with pytest.raises(KeyError) as raised:
        DeviceRegistry().come_online("secret-token")
    assert "secret-token" not in str(raised.value)


def test_open_registration_registers_unknown_devices() -> None:
    registry = DeviceRegistry(open_registration=True)
    device = registry.resolve("new", Provider.fcm, project_id="p")
    assert device is not None
    assert device.online
    assert registry.knows_aosp_api_key("anything")
    assert DeviceRegistry().resolve("new", Provider.fcm) is None


def test_storm_ends_after_its_duration() -> None:
    now = [0.0]
    faults = FaultRuntime(FaultConfig(storm=Storm("UNAVAILABLE", duration_s=5)), clock=lambda: now[0])
    assert faults.pick_error() is not None
    now[0] = 5.0
    assert faults.pick_error() is None
    assert not faults.storm_active


def test_error_rates_are_reproducible_with_a_seed() -> None:
    config = FaultConfig(seed=7, error_rates={"BadDeviceToken": 0.1, "TooManyRequests": 0.05})

    def draws() -> list[str | None]:
        faults = FaultRuntime(config)
        return [getattr(faults.pick_error(), "reason", None) for _ in range(2000)]

    first = draws()
    assert first == draws()
    assert 100 < first.count("BadDeviceToken") < 300
    assert 40 < first.count("TooManyRequests") < 160


def test_error_rate_can_be_changed_and_removed() -> None:
    faults = FaultRuntime()
    faults.set_error_rate("INTERNAL", 1.0)
    assert faults.pick_error() is not None
    faults.set_error_rate("INTERNAL", 0)
    assert faults.pick_error() is None


@pytest.mark.parametrize(
    ("latency", "low", "high"),
    [
        (Latency.fixed(5), 0.005, 0.005),
        (Latency.uniform(1, 3), 0.001, 0.003),
        (Latency.normal(2, 50), 0.0, 1.0),
    ],
)
def test_latency_samples_stay_in_range(latency: Latency, low: float, high: float) -> None:
    faults = FaultRuntime(FaultConfig(latency=latency, seed=1))
    samples = [faults.delay_s() for _ in range(500)]
    assert all(low <= s <= high for s in samples)


def test_garbage_bursts_run_one_after_another_then_stop() -> None:
    faults = FaultRuntime()
    html, cut = (
        GarbageBurst(Garbage.html, requests=2, status=502),
        GarbageBurst(Garbage.truncated, requests=1),
    )
    faults.start_garbage(html, cut)
    assert faults.garbage_left == 3
    picked = [faults.pick_garbage() for _ in range(4)]
    assert picked == [html, html, cut, None]
    assert faults.garbage_left == 0
    faults.start_garbage(html)
    faults.start_garbage()  # stopped before it was sent
    assert (faults.pick_garbage(), faults.garbage_left) == (None, 0)
