"""The Pushy-style AOSP provider: push, status, draining as devices come online, expiry, api keys."""

from __future__ import annotations

import json
from typing import Any

from sandbox import Delivery, DeviceRegistry, Sandbox
from sandbox.aosp import FAILED_PREFIX
from sandbox.h2client import ClientResponse, H2Client
from sandbox.testing import AOSP_KEY, AOSP_OFFLINE, AOSP_TOKEN, World, connect, in_sandbox

JSON = [("content-type", "application/json")]


async def send_push(client: H2Client, body: dict[str, Any], api_key: str = AOSP_KEY) -> ClientResponse:
    return await client.request("POST", f"/push?api_key={api_key}", JSON, json.dumps(body).encode())


async def status(client: H2Client, push_id: str, api_key: str = AOSP_KEY) -> ClientResponse:
    return await client.request("GET", f"/pushes/{push_id}?api_key={api_key}")


def test_push_status_and_draining(world: World) -> None:
    deliveries: list[Delivery] = []
    world.registry.subscribe(deliveries.append)

    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.aosp_url)
        sent = await send_push(client, {"to": [AOSP_TOKEN, AOSP_OFFLINE], "data": {"cmd": "sync"}})
        answer = json.loads(sent.body)
        assert sent.status == 200
        assert answer["success"] is True
        assert answer["info"] == {"devices": 2}
        push_id = answer["id"]
        assert len(push_id) == 24
        int(push_id, 16)
        before = json.loads((await status(client, push_id)).body)["push"]
        assert before["pending_devices"] == [AOSP_OFFLINE]
        assert before["payload"] == {"cmd": "sync"}
        assert before["expiration"] - before["date"] == 30 * 86_400
        world.registry.come_online(AOSP_OFFLINE)
        after = json.loads((await status(client, push_id)).body)["push"]
        await client.close()
        assert after["pending_devices"] == []

    in_sandbox(world)(body)
    assert sorted(d.token for d in deliveries) == sorted([AOSP_TOKEN, AOSP_OFFLINE])


def test_push_expires_after_time_to_live(world: World) -> None:
    deliveries: list[Delivery] = []
    world.registry.subscribe(deliveries.append)

    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.aosp_url)
        sent = await send_push(client, {"to": AOSP_OFFLINE, "data": {"a": 1}, "time_to_live": 60})
        push_id = json.loads(sent.body)["id"]
        world.clock.advance(61)
        world.registry.come_online(AOSP_OFFLINE)
        push = json.loads((await status(client, push_id)).body)["push"]
        await client.close()
        assert push["expiration"] < world.clock()
        assert push["pending_devices"] == [AOSP_OFFLINE]  # never delivered: it expired first

    in_sandbox(world)(body)
    assert deliveries == []


def test_unknown_tokens_are_listed_as_failed_or_refused_when_none_is_known(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.aosp_url)
        mixed = json.loads((await send_push(client, {"to": [AOSP_TOKEN, "nobody"], "data": {}})).body)
        none = await send_push(client, {"to": ["nobody"], "data": {}})
        await client.close()
        assert mixed["info"] == {"devices": 1, "failed": ["nobody"]}
        assert none.status == 400
        assert json.loads(none.body)["code"] == "NO_RECIPIENTS"

    in_sandbox(world)(body)


def test_wrong_or_missing_api_key(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.aosp_url)
        wrong = await send_push(client, {"to": AOSP_TOKEN, "data": {}}, api_key="nope")
        missing = await client.request("POST", "/push", JSON, b"{}")
        await client.close()
        assert wrong.status == 401
        assert set(json.loads(wrong.body)) == {"code", "error"}
        assert json.loads(wrong.body)["code"] == "INVALID_API_KEY"
        assert (missing.status, json.loads(missing.body)["code"]) == (401, "MISSING_API_KEY")

    in_sandbox(world)(body)


def test_status_of_unknown_push_or_other_keys_push(world: World) -> None:
    world.registry.add_aosp_api_key("otherkey")

    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.aosp_url)
        push_id = json.loads((await send_push(client, {"to": AOSP_TOKEN, "data": {}})).body)["id"]
        other = await status(client, push_id, api_key="otherkey")
        unknown = await status(client, "0" * 24)
        await client.close()
        for response in (other, unknown):
            # [P-STAT] INVALID_PUSH_ID; its status is undocumented: 404 (docs/providers.md §5)
            assert (response.status, json.loads(response.body)["code"]) == (404, "INVALID_PUSH_ID")

    in_sandbox(world)(body)


def test_a_push_no_longer_tracked_answers_invalid_push_id(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.aosp_url)
        push_id = json.loads((await send_push(client, {"to": AOSP_OFFLINE, "data": {}})).body)["id"]
        tracked = await status(client, push_id)
        sandbox.aosp.forget(push_id)  # [P-STAT] dropped: expired, or delivered to all by older documents
        gone = await status(client, push_id)
        await client.close()
        assert tracked.status == 200
        assert (gone.status, json.loads(gone.body)["code"]) == (404, "INVALID_PUSH_ID")

    in_sandbox(world)(body)


def test_open_registration_lists_tokens_with_the_failed_prefix_as_failed(world: World) -> None:
    registry = DeviceRegistry(clock=world.clock, open_registration=True)
    open_world = World(registry, world.clock, world.apns_key, world.sa_key)
    failed = f"{FAILED_PREFIX}0000000000000001"

    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.aosp_url)
        mixed = json.loads(
            (await send_push(client, {"to": ["a0000000000000000001", failed], "data": {}})).body
        )
        none = await send_push(client, {"to": [failed], "data": {}})
        await client.close()
        # [P-SEND] info.failed; none known: NO_RECIPIENTS
        assert mixed["info"] == {"devices": 1, "failed": [failed]}
        assert (none.status, json.loads(none.body)["code"]) == (400, "NO_RECIPIENTS")

    in_sandbox(open_world)(body)


def test_invalid_params(world: World) -> None:
    async def body(sandbox: Sandbox) -> None:
        client = await connect(sandbox.aosp_url)
        no_data = await send_push(client, {"to": AOSP_TOKEN})
        bad_ttl = await send_push(client, {"to": AOSP_TOKEN, "data": {}, "time_to_live": 366 * 86_400})
        no_to = await send_push(client, {"data": {}})
        too_big = await send_push(client, {"to": AOSP_TOKEN, "data": {"x": "y" * 4096}})
        await client.close()
        for response in (no_data, bad_ttl, no_to):
            assert (response.status, json.loads(response.body)["code"]) == (400, "INVALID_PARAM")
        assert json.loads(too_big.body)["code"] == "PAYLOAD_LIMIT_EXCEEDED"

    in_sandbox(world)(body)
