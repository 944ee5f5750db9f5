"""The command line's `--json` and the API answer with one shape: the API's response models hold exactly
the representation's names, and the command line writes times as the API does."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from api.credentials import CredentialOut
from api.deployments import DeploymentOut, DeploymentSummary
from api.representation import credential, deployment_detail, deployment_summary
from cli.output import emit_json
from models.enums import Actor, CredentialKind, Provider
from models.statuses import Kind, Status
from models.tables import Deployment, DeploymentEvent, PushCredential, PushReceipt

AT = datetime(2026, 12, 6, 3, 30, tzinfo=UTC)


def _deployment() -> Deployment:
    return Deployment(
        id="a" * 24, organization_id="acme", device_id="b" * 24, kind=Kind.profile, status=Status.failed,
        error_code="E1", error_message="refused", created_at=AT, updated_at=AT, receipt_id=1,
    )  # fmt: skip


def test_a_deployment_has_the_api_models_names() -> None:
    history = [DeploymentEvent(deployment_id="a" * 24, to_status=Status.failed, at=AT, actor=Actor.device)]
    receipt = PushReceipt(id=1, organization_id="acme", provider=Provider.apns, sent_at=AT)

    detail = deployment_detail(_deployment(), history, receipt)
    summary = deployment_summary(_deployment())

    assert set(detail) == set(DeploymentOut.model_fields)
    assert set(summary) == set(DeploymentSummary.model_fields)
    assert DeploymentOut.model_validate(detail).model_dump() == detail, "nothing the API would drop"
    assert detail["error"] == {"code": "E1", "message": "refused", "detail": None}
    assert summary["error"] == "refused"


def test_a_credential_has_the_api_models_names_and_no_secret() -> None:
    row = PushCredential(
        id="c" * 24, organization_id="acme", provider=Provider.fcm, kind=CredentialKind.fcm_service_account,
        secret="PRIVATE", fingerprint="f", project_id="p-1", updated_at=AT,
    )  # fmt: skip

    data = credential(row)

    assert set(data) | {"released"} == set(CredentialOut.model_fields)
    assert "PRIVATE" not in json.dumps(data, default=str)


def test_json_times_are_written_as_the_api_writes_them(capsys: pytest.CaptureFixture[str]) -> None:
    emit_json({"at": AT})

    assert json.loads(capsys.readouterr().out) == {"at": "2026-12-06T03:30:00Z"}
    assert (
        DeploymentSummary.model_validate(deployment_summary(_deployment()))
        .model_dump_json()
        .count('"updatedAt":"2026-12-06T03:30:00Z"')
        == 1
    )
