"""Hostile JSON in any request body (NUL, lone surrogates, NaN, ±Infinity, numbers beyond a double or 64 bits,
nesting deeper than 32) is a 400 in the error envelope with a JSON pointer to it, and writes nothing: on
PostgreSQL, whose JSONB refuses these values, and on SQLite, which would keep them, alike."""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dramatiq
import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from config.settings import Settings
from models.enums import Platform
from models.json_values import MAX_DEPTH
from models.migrations.runner import upgrade
from models.statuses import Kind, Status
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.store.tokens import create_token
from tests.conftest import TABLES
from tests.helpers import status_of
from tests.integration.api.conftest import Client, serving
from workers.app import App
from workers.broker import URGENT_QUEUE

PERMISSIONS = ["mdm.deployment.create", "mdm.deployment.cancel", "mdm.device.report", "mdm.credential.manage"]
WRITTEN = ("deployment", "deployment_event", "push_credential", "audit_event", "push_receipt")

# Each hostile value as JSON text, put where a value goes. A bad key is answered with the pointer of the
# object that holds it: the key itself is not echoed.
HOSTILE = {
    "nul": rb'"wifi\u0000"',
    "lone_high_surrogate": rb'"\ud800"',
    "lone_low_surrogate": rb'"a\udfffb"',
    "raw_surrogate_bytes": b'"\xed\xbf\xbf"',  # U+DFFF encoded as UTF-8 would be: not UTF-8
    "nul_in_key": rb'{"ssid\u0000": 1}',
    "surrogate_in_key": rb'{"\udc00": 1}',
    "nan": b"NaN",
    "infinity": b"Infinity",
    "minus_infinity": b"-Infinity",
    "beyond_double": b"1e999",
    "minus_beyond_double": b"-1e999",
    "beyond_64_bits": str(2**63).encode(),
    "thousands_of_digits": b"9" * 5_000,
    "nested_40": b"[" * 40 + b"]" * 40,
    "nested_5000": b"[" * 5_000 + b"]" * 5_000,  # past the parser's own recursion limit
}
VALUE = "@VALUE@"


@dataclass(frozen=True)
class Place:
    """Where a hostile value goes: the request, with VALUE for the value, and the pointer the answer names."""

    method: str
    path: str
    body: str
    pointer: str


def _places(device: str, deployment: str) -> dict[str, Place]:
    deployments = "/v1/organizations/acme/deployments"
    return {
        "payload": Place(
            "POST",
            deployments,
            f'{{"deployments": [{{"deviceId": "{device}", "kind": "profile", "payload": {{}}}},'
            f' {{"deviceId": "{device}", "kind": "profile", "payload": {{"wifi": {{"ssid": {VALUE}}}}}}}]}}',
            "/deployments/1/payload/wifi/ssid",
        ),
        "error_chain": Place(
            "POST",
            "/v1/organizations/acme/device-reports",
            f'{{"reports": [{{"deploymentId": "{deployment}", "report": "Error", "errorChain": '
            f'[{{"ErrorCode": 12021, "ErrorDomain": "MCMDMErrorDomain", '
            f'"USEnglishDescription": {VALUE}}}]}}]}}',
            "/reports/0/errorChain/0/USEnglishDescription",
        ),
        "credential": Place(
            "PUT",
            "/v1/organizations/acme/credentials/aosp",
            f'{{"kind": "aosp_api_key", "secret": {VALUE}}}',
            "/secret",
        ),
        "cancel_ids": Place("POST", f"{deployments}/cancel", f'{{"ids": [{VALUE}]}}', "/ids/0"),
    }


def _body(place: Place, value: bytes) -> bytes:
    return place.body.encode().replace(VALUE.encode(), value)


def _expected_pointer(place: Place, name: str) -> str:
    if not name.startswith("nested_"):
        return place.pointer
    # The first array nested deeper than MAX_DEPTH: the body is one level, each part of the pointer another.
    depth_at_place = place.pointer.count("/") + 1
    return place.pointer + "/0" * (MAX_DEPTH + 1 - depth_at_place)


@dataclass(frozen=True)
class Served:
    client: Client
    app: App
    token: str
    device: str
    deployment: str


def _serve(app: App) -> Iterator[Served]:
    with app.session() as s:
        ensure_organization(s, organization_id="acme")
        [device] = add_devices(
            s, organization_id="acme", devices=[NewDevice(Platform.aosp, uuid.uuid4().hex, push_magic=None)]
        )
        [deployment] = create_deployments(
            s, organization_id="acme", deployments=[NewDeployment(device, Kind.profile, {"profile": "wifi"})]
        )
        token = create_token(s, organization_id="acme", permissions=PERMISSIONS)[1]
    with serving(app) as base_url:
        client = Client(base_url, metrics_url="")  # its metrics are not read here
        yield Served(client, app, token, device, deployment)
        client.http.close()


@pytest.fixture(scope="module")
def on_postgres(postgres_engine: Engine, postgres_url: str) -> Iterator[Served]:
    """One API for the module: a refused request writes nothing, so each test starts from the same rows."""
    with postgres_engine.begin() as connection:
        connection.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    app = App(Settings(database_url=postgres_url, broker_url="stub://"))
    yield from _serve(app)
    app.close()


@pytest.fixture
def on_sqlite(tmp_path: Path) -> Iterator[Served]:
    url = f"sqlite:///{tmp_path / 'mdmq.db'}"
    upgrade(url)
    app = App(Settings(database_url=url, broker_url="stub://"))
    yield from _serve(app)
    app.close()


def _send(served: Served, place: Place, body: bytes) -> requests.Response:
    return served.client.http.request(
        place.method,
        served.client.base_url + place.path,
        data=body,
        headers={"Authorization": f"Bearer {served.token}", "Content-Type": "application/json"},
        timeout=30,
    )


def _rows(app: App) -> dict[str, int]:
    with app.engine.connect() as connection:
        return {t: connection.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in WRITTEN}


def _assert_refused(served: Served, place_name: str, value_name: str) -> None:
    place = _places(served.device, served.deployment)[place_name]
    value = HOSTILE[value_name]
    before = _rows(served.app)

    answer = _send(served, place, _body(place, value))

    assert answer.status_code == 400, answer.text[:300]
    error = answer.json()
    assert error["status"] is False
    assert error["error"]["code"] == 4000
    assert error["error"]["pointer"] == _expected_pointer(place, value_name), error
    assert error["error"]["message"].startswith(f"Invalid request: {error['error']['pointer'][:200]}")
    assert _rows(served.app) == before, "nothing written"


@pytest.mark.parametrize("value_name", sorted(HOSTILE))
@pytest.mark.parametrize("place_name", ["payload", "error_chain", "credential", "cancel_ids"])
def test_hostile_value_is_refused_with_its_pointer_on_postgres(
    on_postgres: Served, place_name: str, value_name: str
) -> None:
    _assert_refused(on_postgres, place_name, value_name)


@pytest.mark.parametrize(
    ("place_name", "value_name"),
    [("payload", "nan"), ("payload", "nul_in_key"), ("error_chain", "lone_high_surrogate"),
     ("error_chain", "beyond_double"), ("payload", "nested_40")],
)  # fmt: skip
def test_sqlite_gives_the_same_answer(on_sqlite: Served, place_name: str, value_name: str) -> None:
    _assert_refused(on_sqlite, place_name, value_name)


def test_a_body_without_a_content_type_is_read_as_strictly(on_postgres: Served) -> None:
    """FastAPI before 0.132 reads a body without a content type as JSON: such a body is checked too."""
    place = _places(on_postgres.device, on_postgres.deployment)["payload"]
    before = _rows(on_postgres.app)
    answer = on_postgres.client.http.request(
        place.method,
        on_postgres.client.base_url + place.path,
        data=_body(place, HOSTILE["nan"]),
        headers={"Authorization": f"Bearer {on_postgres.token}", "Content-Type": ""},
        timeout=30,
    )
    assert (answer.status_code, answer.json()["error"]["pointer"]) == (400, _expected_pointer(place, "nan"))
    assert _rows(on_postgres.app) == before


def test_the_same_bodies_without_the_hostile_value_are_taken(on_postgres: Served) -> None:
    """The places are real: with a plain string where the hostile value was, each request is answered as usual
    (a credential that does not validate is a 400 of its own, naming no pointer)."""
    before = _rows(on_postgres.app)["deployment"]
    for name, place in _places(on_postgres.device, on_postgres.deployment).items():
        answer = _send(on_postgres, place, _body(place, b'"fine"'))
        assert answer.status_code < 500, (name, answer.text[:300])
        assert "pointer" not in answer.json().get("error", {}), (name, answer.text[:300])
    assert _rows(on_postgres.app)["deployment"] == before + 2, "the create took its two deployments"


# The same values in a device report sent straight to the report actor (as the check-in server may), as
# Python reads them off the broker: each is refused before the actor runs, and the worker goes on.
IN_A_MESSAGE = {
    "nul": "wifi\x00",
    "lone_surrogate": "\ud800",
    "nan": math.nan,
    "infinity": math.inf,
    "beyond_64_bits": 2**63,
    "nested_40": json.loads("[" * 40 + "]" * 40),
}


@pytest.fixture(scope="module")
def worker(on_postgres: Served) -> Iterator[dramatiq.Broker]:
    """The actors the served API declared, on a worker of their own."""
    worker = dramatiq.Worker(on_postgres.app.broker, worker_threads=1, worker_timeout=100)
    worker.start()
    yield on_postgres.app.broker
    worker.stop()


@pytest.mark.parametrize("value_name", sorted(IN_A_MESSAGE))
def test_report_message_with_a_hostile_error_chain_is_refused_and_the_worker_goes_on(
    on_postgres: Served, worker: dramatiq.Broker, caplog: pytest.LogCaptureFixture, value_name: str
) -> None:
    with on_postgres.app.session() as s:
        [deployment] = create_deployments(
            s, organization_id="acme", deployments=[NewDeployment(on_postgres.device, Kind.profile, {})]
        )
    chain = [{"ErrorCode": 12021, "USEnglishDescription": IN_A_MESSAGE[value_name]}]
    before = _rows(on_postgres.app)

    with caplog.at_level(logging.WARNING, logger="workers.broker"):
        # By keyword, so that the message holds whatever else a report item comes to carry.
        worker.get_actor("record_report").send(deployment_id=deployment, report="error", error_chain=chain)
        worker.join(URGENT_QUEUE, timeout=20_000)

    assert _rows(on_postgres.app) == before, "nothing written"
    refusal = [r.getMessage() for r in caplog.records if "message refused" in r.getMessage()]
    assert refusal, "the refusal is logged"
    assert refusal[0].startswith("record_report message refused: /kwargs/error_chain/0/USEnglishDescription")
    assert refusal[0].endswith(f": {_REASONS[value_name]}"), refusal
    # The worker is still there and takes the next message.
    worker.get_actor("cancel").send([deployment])
    worker.join(URGENT_QUEUE, timeout=20_000)
    assert status_of(on_postgres.app.engine, deployment) is Status.cancelled


_REASONS = {
    "nul": "a NUL character (\\u0000) in a string",
    "lone_surrogate": "a lone surrogate (not Unicode text) in a string",
    "nan": "NaN is not a JSON number",
    "infinity": "Infinity is not a JSON number",
    "beyond_64_bits": "an integer beyond 64 bits (signed)",
    "nested_40": "nested deeper than 32 arrays and objects",
}
