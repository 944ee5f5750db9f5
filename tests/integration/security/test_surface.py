"""What the API shows of itself: /metrics only on a metrics port of its own, /docs and /openapi.json off in
production unless enabled, `Allow` on a 405, and every error body in the API's envelope."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy.engine import Engine

from config.settings import Environment, Settings
from models.secrets import KeyRing
from models.store import ensure_organization
from models.store.tokens import create_token
from tests.helpers import answers, free_ports, run_mdmq, scraped, wait_until
from tests.integration.api.conftest import Client, serving
from workers.app import App

PUSH_STATUS = "/v1/organizations/acme/mdm/aosp/enterprise/devices/{device}/commands/{command}/push-status"
DEPLOYMENTS = "/v1/organizations/acme/deployments"
ENTITY = "0" * 24


def error(code: int, message: str) -> dict[str, Any]:
    return {"status": False, "error": {"code": code, "message": message}}


def push_status_url() -> str:
    return PUSH_STATUS.format(device=ENTITY, command=ENTITY)


@pytest.fixture
def token(mdmq: App) -> str:
    with mdmq.session() as session:
        ensure_organization(session, organization_id="acme")
        return create_token(session, organization_id="acme", permissions=["mdm.deployment.create"])[1]


def served_with(postgres_url: str, **settings: Any) -> Iterator[str]:
    key = KeyRing.generate_key()  # production takes none without it
    app = App(Settings(database_url=postgres_url, broker_url="stub://", secret_key=key, **settings))
    try:
        with serving(app) as base_url:
            yield base_url
    finally:
        app.close()


# --- /metrics ----------------------------------------------------------------------------------------------


def test_metrics_are_not_on_the_api_port(client: Client) -> None:
    response = client.get("/metrics")
    assert (response.status_code, response.json()) == (404, error(3002, "Route not found: /metrics"))


def test_metrics_are_on_the_metrics_port(client: Client) -> None:
    client.get("/healthz")
    served = scraped(client.metrics_url)
    assert served.get('mdmq_http_requests_total{method="GET",route="/healthz",status="200"}', 0) >= 1


def test_metrics_listen_on_loopback_unless_set() -> None:
    assert Settings.model_fields["metrics_host"].default == "127.0.0.1"
    assert Settings.model_fields["api_metrics_port"].default == 9190


def test_mdmq_api_serves_metrics_on_their_own_port_only(pg: Engine, postgres_url: str) -> None:
    api_port, metrics_port = free_ports(2)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MDMQ_")} | {
        "MDMQ_DATABASE_URL": postgres_url,
        "MDMQ_ENVIRONMENT": "production",
        "MDMQ_SECRET_KEY": KeyRing.generate_key(),
        "MDMQ_API_METRICS_PORT": str(metrics_port),
    }
    command = [sys.executable, "-c", "from cli.main import main; main()", "api", "--port", str(api_port)]
    api = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base_url, metrics_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        wait_until(lambda: answers(base_url + "/healthz"), 60, "`mdmq api` to answer")
        assert requests.get(base_url + "/metrics", timeout=10).json() == error(
            3002, "Route not found: /metrics"
        )
        assert 'mdmq_http_requests_total{method="GET",route="/healthz",status="200"}' in scraped(metrics_url)
        for path in ("/docs", "/openapi.json", "/redoc"):
            response = requests.get(base_url + path, timeout=10)
            assert (response.status_code, response.json()) == (404, error(3002, f"Route not found: {path}"))
    finally:
        api.send_signal(signal.SIGTERM)
        _, stderr = api.communicate(timeout=30)
    assert api.returncode in (0, -signal.SIGTERM), stderr  # uvicorn ends by the signal it stopped for


def test_mdmq_api_says_which_metrics_port_it_cannot_take(pg: Engine, postgres_url: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_mdmq(
            "api", "--port", str(free_ports(1)[0]),
            env={"MDMQ_DATABASE_URL": postgres_url, "MDMQ_API_METRICS_PORT": str(port)}, timeout_s=60,
        )  # fmt: skip
    assert result.returncode == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "MDMQ_API_METRICS_PORT" in result.stderr


# --- /docs and /openapi.json -------------------------------------------------------------------------------


def test_docs_are_served_in_development(client: Client) -> None:
    assert client.get("/openapi.json").json()["info"]["title"] == "mdmq"
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(("enabled", "status"), [(None, 404), (False, 404), (True, 200)])
def test_docs_in_production_only_when_enabled(
    pg: Engine, postgres_url: str, enabled: bool | None, status: int
) -> None:
    for base_url in served_with(postgres_url, environment=Environment.production, api_docs=enabled):
        for path in ("/docs", "/openapi.json"):
            response = requests.get(base_url + path, timeout=30)
            assert response.status_code == status, path
            if status == 404:
                assert response.json() == error(3002, f"Route not found: {path}")


def test_docs_can_be_turned_off_in_development(pg: Engine, postgres_url: str) -> None:
    for base_url in served_with(postgres_url, api_docs=False):
        assert requests.get(base_url + "/openapi.json", timeout=30).status_code == 404


# --- errors ------------------------------------------------------------------------------------------------


def test_a_405_names_the_allowed_methods(client: Client) -> None:
    response = client.delete(push_status_url())
    assert (response.status_code, response.json()) == (405, error(3003, "Method not allowed: DELETE"))
    assert response.headers["allow"] == "GET"
    posted = client.http.post(client.base_url + "/healthz", timeout=30)
    assert posted.status_code == 405
    assert "GET" in posted.headers["allow"]


def test_an_unknown_route_is_a_404_in_the_envelope(client: Client) -> None:
    response = client.http.post(client.base_url + "/wp-login.php", data=b"x", timeout=30)
    assert (response.status_code, response.json()) == (404, error(3002, "Route not found: /wp-login.php"))


def test_an_oversize_body_is_a_413_in_the_envelope(client: Client, mdmq: App) -> None:
    limit = mdmq.settings.api_max_body_bytes
    response = client.http.post(client.base_url + DEPLOYMENTS, data=b"x" * (limit + 1), timeout=30)
    assert response.status_code == 413
    assert response.json() == error(4013, f"Request body too large: {limit + 1} bytes, at most {limit}")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'{"deployments": "none"}', "application/json"),
        (b"a=b", "text/plain"),
    ],
)
def test_a_malformed_body_is_a_400_in_the_envelope(
    client: Client, token: str, body: bytes, content_type: str
) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    response = client.http.post(client.base_url + DEPLOYMENTS, data=body, headers=headers, timeout=30)
    assert response.status_code == 400
    answer = response.json()
    assert answer["status"] is False
    assert answer["error"]["code"] == 4000
    assert answer["error"]["message"].startswith("Invalid request: ")
    assert set(answer) == {"status", "error"}


def test_a_bad_path_parameter_is_a_400_in_the_envelope(client: Client, token: str) -> None:
    response = client.get(
        PUSH_STATUS.format(device="not-an-id", command=ENTITY), headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 4000


def test_malformed_http_is_a_400_in_the_envelope(client: Client) -> None:
    host, port = urlsplit(client.base_url).hostname, urlsplit(client.base_url).port
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body) == error(4000, "Invalid request: malformed HTTP")


def test_a_crash_is_a_500_in_the_envelope(pg: Engine) -> None:
    # Nothing listens on port 1: the database is down, and reading the token's row fails inside the app.
    for base_url in served_with("postgresql+psycopg://postgres@127.0.0.1:1/none"):
        response = requests.get(
            base_url + "/v1/organizations/org/audit-events",
            headers={"Authorization": "Bearer mdmq_not_a_real_token"},
            timeout=60,
        )
        assert (response.status_code, response.json()) == (500, error(5000, "Internal error"))
