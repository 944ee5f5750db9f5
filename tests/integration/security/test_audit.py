"""The audit trail, against the real API on PostgreSQL: each credential upload, forced topic change, cancel,
retry, token create and revoke and secret rotation leaves one event naming its actor (the API token's id or
`cli`) and no secret; `mdmq audit` and `GET …/audit-events` list them newest first; another organization's
events are out of reach (404 3001), as its deployments are."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy.engine import Engine

from api.audit import AuditEventOut
from models.permissions import OPS_VIEW, PERMISSIONS
from models.statuses import Kind, Status
from models.store import ensure_organization
from models.store.audit import audit_events, record_audit_event, record_secret_rotation
from models.store.tokens import create_token
from models.types import utcnow
from sandbox.tls import issue_client_certificate, make_ca, mdm_topic
from tests.conftest import MakeDeployments
from tests.helpers import force_status
from tests.integration.api.conftest import Client
from tests.integration.security.conftest import Cli
from workers.app import App

ORG = "/v1/organizations/acme"
AOSP_KEY = "aosp-key-" + "k" * 32


def token(mdmq: App, org: str = "acme", permissions: list[str] | None = None) -> tuple[str, str]:
    with mdmq.session() as s:
        ensure_organization(s, organization_id=org)
        every = sorted(PERMISSIONS - {OPS_VIEW})  # an operator's permission goes alone
        row, secret = create_token(s, organization_id=org, permissions=permissions or every)
    return row.id, secret


def call(client: Client, method: str, path: str, secret: str, body: Any = None) -> requests.Response:
    return client.http.request(
        method, client.base_url + path, json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=30
    )


def certificate(topic: str) -> dict[str, Any]:
    issued = issue_client_certificate(make_ca(), topic, days=365)
    return {"kind": "apns_certificate", "secret": (issued.cert_pem + issued.key_pem).decode()}


def test_each_audited_action_leaves_one_event_with_its_actor_and_no_secret(
    client: Client, mdmq: App, cli: Cli, pg: Engine, make_deployments: MakeDeployments, tmp_path: Path
) -> None:
    api_id, api_secret = token(mdmq)
    to_cancel, to_retry, cli_cancel, cli_retry = make_deployments(pg, Kind.profile, count=4)
    for failed in (to_retry, cli_retry):
        force_status(pg, failed, Status.failed)
    old, new = certificate(mdm_topic()), certificate(mdm_topic())
    key_file = tmp_path / "aosp.key"
    key_file.write_text(AOSP_KEY)

    # Through the API, as the token.
    assert call(
        client, "PUT", f"{ORG}/credentials/aosp", api_secret, {"kind": "aosp_api_key", "secret": AOSP_KEY}
    ).ok
    assert call(client, "PUT", f"{ORG}/credentials/apns", api_secret, old).ok
    assert call(client, "PUT", f"{ORG}/credentials/apns", api_secret, new | {"force": True}).ok
    assert call(client, "POST", f"{ORG}/deployments/cancel", api_secret, {"ids": [to_cancel]}).ok
    assert call(client, "POST", f"{ORG}/deployments/retry", api_secret, {"ids": [to_retry]}).ok
    # Through the command line.
    assert (
        cli("credentials", "put", "--org", "acme", "--provider", "aosp", "--file", str(key_file)).exit_code
        == 0
    )
    assert cli("cancel", cli_cancel, "--yes").exit_code == 0
    assert cli("retry", cli_retry, "--yes").exit_code == 0
    created = cli("token", "create", "--org", "acme", "--permission", "mdm.audit.get", "--json")
    made = json.loads(created.stdout)
    assert cli("token", "revoke", made["id"]).exit_code == 0
    # What `mdmq secrets rotate` calls, with the rows it re-encrypted per organization.
    with mdmq.session() as s:
        record_secret_rotation(s, rows_by_organization={"acme": 3, "other-org": 0}, key_id="key-2")

    with mdmq.session() as s:
        events = list(reversed(audit_events(s, organization_id="acme")))
    assert [(e.action, e.actor) for e in events] == [
        ("credential.uploaded", api_id),
        ("credential.uploaded", api_id),
        ("credential.topic_changed", api_id),
        ("credential.uploaded", api_id),
        ("deployments.cancelled", api_id),
        ("deployments.retried", api_id),
        ("credential.uploaded", "cli"),
        ("deployments.cancelled", "cli"),
        ("deployments.retried", "cli"),
        ("token.created", "cli"),
        ("token.revoked", "cli"),
        ("secrets.rotated", "cli"),
    ]
    details = {e.action: e.detail for e in events}
    assert details["deployments.cancelled"] == {"applied": 1, "refused": 0, "ids": [cli_cancel]}
    assert details["deployments.retried"] == {"applied": 1, "refused": 0, "ids": [cli_retry]}
    assert details["token.created"]["tokenId"] == details["token.revoked"]["tokenId"] == made["id"]  # type: ignore[index]
    assert details["secrets.rotated"] == {"rows": 3, "keyId": "key-2"}
    assert events[0].detail["provider"] == "aosp"  # type: ignore[index]
    assert all(e.organization_id == "acme" for e in events)
    recorded = json.dumps([(e.actor, e.detail) for e in events])
    for secret in (
        api_secret,
        made["token"],
        AOSP_KEY,
        "PRIVATE KEY",
        old["secret"][:80],
        new["secret"][:80],
    ):
        assert secret not in recorded


def test_mdmq_audit_and_the_api_list_them_newest_first_a_page_at_a_time(
    client: Client, mdmq: App, cli: Cli
) -> None:
    _, secret = token(mdmq, permissions=["mdm.audit.get"])
    now = utcnow()
    with mdmq.session() as s:
        for minutes, action in (
            (50, "a.first"),
            (40, "b.second"),
            (30, "c.third"),
            (20, "d.fourth"),
            (10, "e.fifth"),
        ):
            record_audit_event(
                s, organization_id="acme", actor="cli", action=action, now=now - timedelta(minutes=minutes)
            )
    newest_first = ["e.fifth", "d.fourth", "c.third", "b.second", "a.first"]

    pages: list[list[dict[str, Any]]] = []
    cursor: int | None = None
    while True:
        query = f"?limit=2&cursor={cursor}" if cursor else "?limit=2"
        answer = call(client, "GET", f"{ORG}/audit-events{query}", secret)
        assert answer.status_code == 200, answer.text
        pages.append(answer.json()["data"]["items"])
        cursor = answer.json()["data"]["next"]
        if cursor is None:
            break
    listed = cli("audit", "--org", "acme", "--json")
    since = (now - timedelta(minutes=25)).isoformat()
    recent = client.get(
        f"{ORG}/audit-events", params={"since": since}, headers={"Authorization": f"Bearer {secret}"}
    )

    assert [len(page) for page in pages] == [2, 2, 1]
    assert [item["action"] for page in pages for item in page] == newest_first
    assert set(pages[0][0]) == set(AuditEventOut.model_fields), "the API's names"
    assert listed.exit_code == 0, listed.output
    assert [e["action"] for e in json.loads(listed.stdout)["events"]] == newest_first
    assert [e["action"] for e in recent.json()["data"]["items"]] == ["e.fifth", "d.fourth"]
    cli_recent = cli("audit", "--org", "acme", "--since", since, "--json")
    assert [e["action"] for e in json.loads(cli_recent.stdout)["events"]] == ["e.fifth", "d.fourth"]
    assert [
        e["action"]
        for e in json.loads(cli("audit", "--org", "acme", "--since", "15m", "--json").stdout)["events"]
    ] == ["e.fifth"]
    table = cli("audit", "--org", "acme")
    assert table.exit_code == 0
    assert "c.third" in table.stdout
    naive = client.get(
        f"{ORG}/audit-events",
        params={"since": "2026-01-01T00:00:00"},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert (naive.status_code, naive.json()["error"]["code"]) == (400, 4000)
    assert cli("audit", "--org", "acme", "--since", "2026-01-01T00:00:00").exit_code == 64


def test_another_organizations_events_are_out_of_reach(client: Client, mdmq: App, cli: Cli) -> None:
    _, acme_reader = token(mdmq, permissions=["mdm.audit.get"])
    _, acme_other_rights = token(mdmq, permissions=["mdm.deployment.get"])
    _, other_reader = token(mdmq, org="other-org", permissions=["mdm.audit.get"])
    with mdmq.session() as s:
        record_audit_event(s, organization_id="acme", actor="cli", action="token.created")
        newer = record_audit_event(s, organization_id="other-org", actor="cli", action="hold.released").id

    foreign = call(client, "GET", f"{ORG}/audit-events", other_reader)
    probed = call(client, "GET", f"{ORG}/audit-events?cursor={newer}", acme_reader)
    assert probed.json()["data"]["items"] == [], "another organization's event is no cursor: nothing after it"
    without = call(client, "GET", f"{ORG}/audit-events", acme_other_rights)
    own = call(client, "GET", "/v1/organizations/other-org/audit-events", other_reader)

    assert (foreign.status_code, foreign.json()["error"]["code"]) == (404, 3001)
    assert (without.status_code, without.json()["error"]["code"]) == (403, 4003)
    assert "mdm.audit.get" in without.json()["error"]["message"]
    assert [e["action"] for e in own.json()["data"]["items"]] == ["hold.released"]
    assert [
        e["action"] for e in call(client, "GET", f"{ORG}/audit-events", acme_reader).json()["data"]["items"]
    ] == ["token.created"]
    other = json.loads(cli("audit", "--org", "other-org", "--json").stdout)
    assert [e["organizationId"] for e in other["events"]] == ["other-org"]
    assert cli("audit", "--org", "nobody-here", "--json").exit_code == 1, "none: exit 1"


@pytest.mark.parametrize(
    "query",
    [
        {"cursor": str(2**63)},
        {"cursor": "0"},
        {"action": "token\x00created"},
        {"limit": "0"},
        {"since": "soon"},
    ],
)
def test_a_malformed_query_is_a_400_not_a_database_error(
    client: Client, mdmq: App, query: dict[str, str]
) -> None:
    _, secret = token(mdmq, permissions=["mdm.audit.get"])

    answer = client.get(f"{ORG}/audit-events", params=query, headers={"Authorization": f"Bearer {secret}"})

    assert (answer.status_code, answer.json()["error"]["code"]) == (400, 4000)
