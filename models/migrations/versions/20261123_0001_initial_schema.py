"""initial schema: organizations, credentials, devices, deployments, events, receipts, certificates, lease

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Generated with `alembic revision --autogenerate`, then reviewed: enum value lists are frozen here (a migration
must not change when the Python enums do) and written once each. `deployment` and `deployment_event` have no
foreign keys, on purpose: see the docstring of models/tables.py.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import models.types

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TS = models.types.UTCDateTime(timezone=True)
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _enum(name: str, *values: str, length: int = 32) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, length=length)


PROVIDER = _enum("provider", "apns", "fcm", "aosp")
STATUS = _enum(
    "status",
    "Queued", "Waiting", "In progress", "Completed", "Failed", "Cancelled", "Error distributing",
    "Postponed", "Waiting for startup", "In Progress", "Ready", "Accepted By Device",
    "Notification created", "User acknowledged",
)  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "organization",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("wake_rate_per_s", sa.Float(), nullable=True),
        sa.Column("retry_policy", JSON, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "scheduler_lease",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("acquired_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "watched_certificate",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("source", _enum("certificatesource", "pem_file", "tls_endpoint"), nullable=False),
        sa.Column("target", sa.String(length=512), nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("not_after", TS, nullable=True),
        sa.Column("last_checked_at", TS, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source", "target"),
    )
    op.create_table(
        "device",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("platform", _enum("platform", "ios", "macos", "android", "aosp"), nullable=False),
        sa.Column("provider", PROVIDER, nullable=False),
        sa.Column("push_token", sa.String(length=512), nullable=False),
        sa.Column("push_magic", sa.String(length=128), nullable=True),
        sa.Column("token_state", _enum("tokenstate", "valid", "invalid"), nullable=False),
        sa.Column("token_invalid_reason", sa.String(length=200), nullable=True),
        sa.Column("token_invalid_at", TS, nullable=True),
        sa.Column("last_seen_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["organization_id"], ["organization.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_device_organization", "device", ["organization_id", "id"])
    op.create_table(
        "push_credential",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("provider", PROVIDER, nullable=False),
        sa.Column(
            "kind",
            _enum("credentialkind", "apns_token", "apns_certificate", "fcm_service_account", "aosp_api_key"),
            nullable=False,
        ),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=True),
        sa.Column("team_id", sa.String(length=64), nullable=True),
        sa.Column("topic", sa.String(length=255), nullable=True),
        sa.Column("project_id", sa.String(length=255), nullable=True),
        sa.Column("environment", _enum("pushenvironment", "production", "sandbox"), nullable=False),
        sa.Column("not_after", TS, nullable=True),
        sa.Column(
            "status",
            _enum("credentialstatus", "valid", "expiring", "expired", "revoked", "invalid"),
            nullable=False,
        ),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("last_checked_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["organization_id"], ["organization.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("organization_id", "provider"),
    )
    op.create_table(
        "push_receipt",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("provider", PROVIDER, nullable=False),
        sa.Column("provider_push_id", sa.String(length=200), nullable=True),
        sa.Column("device_count", sa.Integer(), nullable=False),
        sa.Column("sent_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("delivered", sa.Boolean(), nullable=True),
        sa.Column("pending_devices", sa.Integer(), nullable=True),
        sa.Column("last_polled_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["organization_id"], ["organization.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_push_receipt_poll", "push_receipt", ["provider", "delivered", "expires_at"])
    op.create_table(
        "deployment",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=24), nullable=False),
        sa.Column("kind", _enum("kind", "profile", "app", "security_action", "message"), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("urgent", sa.Boolean(), nullable=False),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("previous_status", STATUS, nullable=True),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column("postpone_count", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS, nullable=True),
        sa.Column("hold_reason", sa.String(length=200), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_detail", JSON, nullable=True),
        sa.Column("last_device_reason", sa.Text(), nullable=True),
        sa.Column("receipt_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("enqueued_at", TS, nullable=True),
        sa.Column("pushed_at", TS, nullable=True),
        sa.Column("fetched_at", TS, nullable=True),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_deployment_device_status", "deployment", ["device_id", "status"])
    op.create_index("ix_deployment_org_status", "deployment", ["organization_id", "status"])
    op.create_index(
        "ix_deployment_receipt",
        "deployment",
        ["receipt_id"],
        postgresql_where=sa.text("receipt_id IS NOT NULL"),
        sqlite_where=sa.text("receipt_id IS NOT NULL"),
    )
    op.create_index("ix_deployment_status_next", "deployment", ["status", "next_attempt_at"])
    op.create_table(
        "deployment_event",
        sa.Column("id", BIGINT_PK, nullable=False),
        sa.Column("deployment_id", sa.String(length=24), nullable=False),
        sa.Column("from_status", STATUS, nullable=True),
        sa.Column("to_status", STATUS, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column(
            "actor", _enum("actor", "api", "worker", "scheduler", "device", "ops", length=16), nullable=False
        ),
        sa.Column("detail", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_deployment_event_deployment", "deployment_event", ["deployment_id", "id"])


def downgrade() -> None:
    for table in (
        "deployment_event", "deployment", "push_receipt", "push_credential", "device",
        "watched_certificate", "scheduler_lease", "organization",
    ):  # fmt: skip
        op.drop_table(table)
