"""AOSP (Pushy-style) fidelity: each rule of Pushy's API reference, the raw answer and mdmq's reading of it.

Sources (docs/providers.md): [P-API] "API Reference (Pushy)", [P-SEND] "Send Notifications API", [P-STAT]
"Notification Status API"; what those pages leave undocumented cites providers.md §5. mdmq's `AospProvider`
sends every push and polls every status; requests mdmq never makes (no api_key, a TTL over a year) go through
the sandbox's raw HTTP/2 client. `PushResult.status` and `.reason` are the raw answer off the wire (the
error `code`, or "failed" for a token of `info.failed`); `.outcome` and `.advice` are mdmq's reading.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from sandbox import DeviceRegistry, FaultConfig, Sandbox
from sandbox.h2client import ClientResponse
from sandbox.testing import connect
from tests.integration.fidelity.expected import Expected, check
from workers.providers.aosp import AospProvider, PushGone, PushStatus
from workers.providers.base import Outcome, Push, PushResult, PushType
from workers.providers.credentials import AospApiKey
from workers.providers.endpoints import ProviderEndpoints

T = TypeVar("T")
API_KEY = secrets.token_hex(16)


@pytest.fixture
def registry() -> DeviceRegistry:
    registry = DeviceRegistry()
    registry.add_aosp_api_key(API_KEY)
    return registry


def device(registry: DeviceRegistry, *, online: bool = True) -> str:
    """[P-SEND] the format is undocumented; the examples are 22 hex characters."""
    token = secrets.token_hex(11)
    registry.add_aosp_device(token, online=online)
    return token


def wake_up(device_id: str, token: str, **payload: Any) -> Push:
    return Push(device_id, token=token, push_type=PushType.data, payload=payload or {"wake": "1"})


def with_provider(
    registry: DeviceRegistry,
    use: Callable[[AospProvider, Sandbox], Coroutine[Any, Any, T]],
    *,
    api_key: str = API_KEY,
    faults: FaultConfig | None = None,
) -> T:
    """Run `use` with mdmq's client for `api_key` against a sandbox of `registry`."""

    async def scenario() -> T:
        async with Sandbox(registry, aosp_faults=faults) as sandbox:
            provider = AospProvider(AospApiKey(api_key), ProviderEndpoints(aosp=sandbox.aosp_url))
            try:
                return await use(provider, sandbox)
            finally:
                await provider.close()

    return asyncio.run(scenario())


def send(registry: DeviceRegistry, pushes: list[Push], **options: Any) -> list[PushResult]:
    async def use(provider: AospProvider, _: Sandbox) -> list[PushResult]:
        return await provider.send(pushes)

    return with_provider(registry, use, **options)


def raw(registry: DeviceRegistry, target: str, body: dict[str, Any]) -> ClientResponse:
    """One request mdmq never makes."""

    async def scenario() -> ClientResponse:
        async with Sandbox(registry) as sandbox:
            client = await connect(sandbox.aosp_url)
            headers = [("content-type", "application/json")]
            try:
                return await client.request("POST", target, headers, json.dumps(body).encode())
            finally:
                await client.close()

    return asyncio.run(scenario())


# -- send ----------------------------------------------------------------------------------------------------


def test_one_request_wakes_many_devices_under_one_push_id(registry: DeviceRegistry) -> None:
    """[P-SEND] 200 {"success": true, "id", "info": {"devices"}}: accepted (not delivered), one id for
    every token of the request, which the status API answers for."""
    results = send(registry, [wake_up("d1", device(registry)), wake_up("d2", device(registry))])
    assert {(r.status, r.reason, r.outcome) for r in results} == {(200, None, Outcome.accepted)}
    assert len({r.push_id for r in results}) == 1


def test_a_failed_token_is_ambiguous(registry: DeviceRegistry) -> None:
    """[P-SEND] info.failed lists the tokens not pushed to. A key of another app fails every token, so it is
    a dead_token answer with the advice to check the key, never a dead device outright (providers.md §3)."""
    live, unknown = device(registry), secrets.token_hex(11)
    accepted, failed = send(registry, [wake_up("d1", live), wake_up("d2", unknown)])
    assert accepted.outcome is Outcome.accepted
    check(failed, Expected(200, "failed", Outcome.dead_token, "API key"))


def test_no_recipients_is_ambiguous_for_each_token(registry: DeviceRegistry) -> None:
    """[P-API] [P-SEND] NO_RECIPIENTS: none of the tokens is known under this key, which a wrong key says
    for all of them: dead_token for each."""
    results = send(registry, [wake_up("d1", secrets.token_hex(11)), wake_up("d2", secrets.token_hex(11))])
    for result in results:
        check(result, Expected(400, "NO_RECIPIENTS", Outcome.dead_token, "API key"))


def test_a_wrong_api_key_is_the_credential(registry: DeviceRegistry) -> None:
    """[P-API] INVALID_API_KEY (401): the key is refused; the organization is held, no token touched."""
    (result,) = send(registry, [wake_up("d1", device(registry))], api_key=secrets.token_hex(16))
    check(result, Expected(401, "INVALID_API_KEY", Outcome.credential))


def test_a_missing_api_key_is_refused(registry: DeviceRegistry) -> None:
    """[P-API] MISSING_API_KEY (401), answered as `{"code", "error"}`. mdmq always sends its key, so its
    reading of the code (the credential's) is checked by injection."""
    response = raw(registry, "/push", {"to": device(registry), "data": {}})
    assert response.status == 401
    assert set(json.loads(response.body)) == {"code", "error"}
    assert json.loads(response.body)["code"] == "MISSING_API_KEY"
    faults = FaultConfig(error_rates={"MISSING_API_KEY": 1.0})
    (result,) = send(registry, [wake_up("d1", device(registry))], faults=faults)
    check(result, Expected(401, "MISSING_API_KEY", Outcome.credential))


def test_data_over_four_kilobytes_is_the_payloads(registry: DeviceRegistry) -> None:
    """[P-SEND] data up to 4 KB: PAYLOAD_LIMIT_EXCEEDED, payload_rejected."""
    (result,) = send(registry, [wake_up("d1", device(registry), blob="x" * 5000)])
    check(result, Expected(413, "PAYLOAD_LIMIT_EXCEEDED", Outcome.payload_rejected))


def test_an_invalid_parameter_is_the_payloads(registry: DeviceRegistry) -> None:
    """[P-SEND] time_to_live at most 365 days: INVALID_PARAM. mdmq caps the TTL, so the raw request shows
    the answer and an injected one mdmq's reading of it."""
    body = {"to": device(registry), "data": {}, "time_to_live": 366 * 86_400}
    response = raw(registry, f"/push?api_key={API_KEY}", body)
    assert (response.status, json.loads(response.body)["code"]) == (400, "INVALID_PARAM")
    faults = FaultConfig(error_rates={"INVALID_PARAM": 1.0})
    (result,) = send(registry, [wake_up("d1", device(registry))], faults=faults)
    check(result, Expected(400, "INVALID_PARAM", Outcome.payload_rejected))


@pytest.mark.parametrize(
    ("code", "status"),
    [("RATE_LIMIT_EXCEEDED", 429), ("INTERNAL_SERVER_ERROR", 500), ("SERVICE_UNAVAILABLE", 503)],
)
def test_rate_limits_and_server_errors_are_transient(
    registry: DeviceRegistry, code: str, status: int
) -> None:
    """[P-API] 429 and 5xx: nobody's; retried, after Retry-After when the answer has one."""
    faults = FaultConfig(error_rates={code: 1.0}, retry_after_s=9)
    (result,) = send(registry, [wake_up("d1", device(registry))], faults=faults)
    check(result, Expected(status, code, Outcome.transient))
    assert result.retry_after_s == 9.0


# -- status --------------------------------------------------------------------------------------------------


def test_the_status_lists_the_devices_not_reached_yet(registry: DeviceRegistry) -> None:
    """[P-STAT] 200 {"push": {"date", "expiration", "pending_devices"}}: the tokens not reached yet, times in
    Unix seconds; once the device connects, none is pending (delivered)."""
    offline = device(registry, online=False)

    async def use(provider: AospProvider, _: Sandbox) -> tuple[PushStatus, PushStatus]:
        (result,) = await provider.send([wake_up("d1", offline)])
        assert result.push_id is not None
        pending = await provider.poll(result.push_id)
        registry.come_online(offline)
        return pending, await provider.poll(result.push_id)

    pending, delivered = with_provider(registry, use)
    assert (pending.pending_devices, pending.delivered) == (1, False)
    assert pending.sent_at is not None
    assert pending.expires_at is not None
    assert (delivered.pending_devices, delivered.delivered) == (0, True)


def test_a_push_no_longer_tracked_is_invalid_push_id_never_a_failure(registry: DeviceRegistry) -> None:
    """[P-STAT] INVALID_PUSH_ID: the id is invalid, of another app, or no longer tracked, which older
    documents say may mean expired *or* delivered to every device. The emulator answers 404 (providers.md §5);
    mdmq raises PushGone, on which the poller stops and decides by the stored expiry."""
    offline = device(registry, online=False)

    async def use(provider: AospProvider, sandbox: Sandbox) -> list[type[Exception]]:
        (result,) = await provider.send([wake_up("d1", offline)])
        assert result.push_id is not None
        sandbox.aosp.forget(result.push_id)
        raised: list[type[Exception]] = []
        for push_id in (result.push_id, "0" * 24):  # dropped, and never made
            with pytest.raises(PushGone) as gone:
                await provider.poll(push_id)
            raised.append(type(gone.value))
        return raised

    assert with_provider(registry, use) == [PushGone, PushGone]


def test_the_raw_status_of_an_unknown_push(registry: DeviceRegistry) -> None:
    """[P-STAT] the raw answer: `{"code": "INVALID_PUSH_ID", "error": ...}`, 404 (docs/providers.md §5)."""

    async def scenario() -> ClientResponse:
        async with Sandbox(registry) as sandbox:
            client = await connect(sandbox.aosp_url)
            try:
                return await client.request("GET", f"/pushes/{'0' * 24}?api_key={API_KEY}")
            finally:
                await client.close()

    response = asyncio.run(scenario())
    assert (response.status, json.loads(response.body)["code"]) == (404, "INVALID_PUSH_ID")
