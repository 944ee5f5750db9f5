"""`mdmq credentials put` through the real entry point against PostgreSQL: a push certificate stored and
what was held for the old one released and enqueued, as the API does; the exit codes of a refused
credential, a refused change of topic and a usage error; a forced change audited as the command line's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from models.enums import Provider
from models.statuses import Kind
from models.store.audit import audit_events
from models.store.dispatch import hold_for_credential
from models.tables import Deployment, PushCredential
from sandbox.tls import issue_client_certificate, make_ca, mdm_topic
from tests.conftest import MakeDeployments
from tests.helpers import run_mdmq
from tests.integration.providers.conftest import private_pem
from workers.providers.credentials import MDM_NEEDS_CERTIFICATE
from workers.services.credentials import TOPIC_CHANGED


@pytest.fixture
def mdmq(postgres_url: str) -> Any:
    def run(*args: str) -> tuple[int, Any, str]:
        result = run_mdmq("credentials", "put", *args, env={"MDMQ_DATABASE_URL": postgres_url}, timeout_s=120)
        out = json.loads(result.stdout) if "--json" in args and result.returncode == 0 else result.stdout
        return result.returncode, out, result.stderr

    return run


def certificate_file(directory: Path, topic: str) -> str:
    """An MDM push certificate and its key in one PEM file, as an operator keeps it."""
    issued = issue_client_certificate(make_ca(), topic, days=365)
    path = directory / f"{topic}.pem"
    path.write_bytes(issued.cert_pem + issued.key_pem)
    return str(path)


def test_a_certificate_is_stored_and_what_was_held_is_released_and_enqueued(
    pg: Engine, make_deployments: MakeDeployments, mdmq: Any, tmp_path: Path
) -> None:
    held = make_deployments(pg, Kind.profile, count=2, organization_id="acme")
    with Session(pg) as s, s.begin():
        assert hold_for_credential(s, organization_id="acme", provider=Provider.apns, reason="expired") == 2
    topic = mdm_topic()

    code, out, err = mdmq(
        "--org", "acme", "--provider", "apns", "--file", certificate_file(tmp_path, topic), "--json"
    )

    assert code == 0, err
    assert (out["kind"], out["status"], out["topic"], out["released"]) == (
        "apns_certificate",
        "valid",
        topic,
        2,
    )
    assert "PRIVATE" not in json.dumps(out)
    with Session(pg) as s:
        rows = list(s.exec(select(Deployment).where(Deployment.id.in_(held))))  # type: ignore[attr-defined]
    assert [(d.hold_reason, d.enqueued_at is not None) for d in rows] == [(None, True), (None, True)]


def test_a_change_of_topic_exits_5_unless_forced_and_the_forced_one_is_audited(
    pg: Engine, mdmq: Any, tmp_path: Path
) -> None:
    old, new = mdm_topic(), mdm_topic()
    assert mdmq("--org", "acme", "--provider", "apns", "--file", certificate_file(tmp_path, old))[0] == 0

    code, _, err = mdmq("--org", "acme", "--provider", "apns", "--file", certificate_file(tmp_path, new))

    assert code == 5
    assert "stop answering until they re-enroll" in err
    assert "same Apple ID" in err
    assert "--force" in err
    code, out, err = mdmq(
        "--org", "acme", "--provider", "apns", "--file", certificate_file(tmp_path, new), "--force", "--json"
    )
    assert (code, out["topic"] if code == 0 else err) == (0, new)
    with Session(pg) as s:
        events = audit_events(s, organization_id="acme", action=TOPIC_CHANGED)
    assert [(e.action, e.actor, e.detail) for e in events] == [
        (TOPIC_CHANGED, "cli", {"provider": "apns", "old_topic": old, "new_topic": new})
    ]


def test_a_refused_credential_exits_4_with_the_reason_and_a_usage_error_64(
    pg: Engine, mdmq: Any, tmp_path: Path
) -> None:
    p8 = tmp_path / "AuthKey_KEY1234567.p8"
    p8.write_text(private_pem(ec.generate_private_key(ec.SECP256R1())))

    code, _, err = mdmq("--org", "acme", "--provider", "apns", "--file", str(p8), "--kind", "apns_token")

    assert code == 4
    assert err.strip() == f"mdmq: the apns credential was refused: {MDM_NEEDS_CERTIFICATE}"  # [A-MDMPUSH]
    code, _, err = mdmq("--org", "acme", "--provider", "fcm", "--file", str(p8), "--kind", "aosp_api_key")
    assert code == 4
    assert "a credential for fcm is of kind fcm_service_account, not aosp_api_key" in err
    assert mdmq("--org", "no such org!", "--provider", "apns", "--file", str(p8))[0] == 64
    assert mdmq("--org", "acme", "--provider", "apns", "--file", str(tmp_path / "missing.pem"))[0] == 64
    with Session(pg) as s:
        assert list(s.exec(select(PushCredential))) == [], "nothing stored"
