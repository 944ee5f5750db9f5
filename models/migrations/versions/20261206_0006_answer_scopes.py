"""answer scopes: provider holds, the answer window, invalidation records, audit events; APNs topics read
from the stored certificates

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from cryptography import x509
from cryptography.x509.oid import NameOID
from sqlalchemy.dialects import postgresql

import models.types

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TS = models.types.UTCDateTime(timezone=True)
_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def upgrade() -> None:
    with op.batch_alter_table("device") as batch:
        batch.add_column(sa.Column("token_invalid_status", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("token_invalid_fingerprint", sa.String(64), nullable=True))
        batch.add_column(
            sa.Column("token_invalid_ambiguous", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "provider_hold",
        sa.Column("organization_id", sa.String(64), sa.ForeignKey("organization.id"), primary_key=True),
        sa.Column("provider", sa.String(32), primary_key=True),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("provider_reason", sa.String(64), nullable=True),
        sa.Column("fingerprint", sa.String(64), nullable=True),
        sa.Column("held_at", TS, nullable=False),
        sa.Column("probe_at", TS, nullable=True),
        sa.Column("probe_failures", sa.Integer(), nullable=False),
        sa.Column("last_probe_at", TS, nullable=True),
        sa.Column("last_probe_result", sa.Text(), nullable=True),
    )
    op.create_index("ix_provider_hold_probe_at", "provider_hold", ["probe_at"])
    op.create_table(
        "push_answer_window",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("answers", sa.String(512), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "audit_event",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("organization_id", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("detail", JSON, nullable=True),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_audit_event_organization_at", "audit_event", ["organization_id", "at"])
    _topics_from_certificates()


def _topics_from_certificates() -> None:
    """An MDM push goes to the topic of the certificate's subject UID, whatever was typed at upload."""
    connection = op.get_bind()
    rows = connection.execute(
        sa.text("SELECT id, secret FROM push_credential WHERE kind = 'apns_certificate'")
    ).all()
    for credential_id, secret in rows:
        topic = _subject_uid(secret)
        if topic is not None:
            connection.execute(
                sa.text("UPDATE push_credential SET topic = :topic WHERE id = :id"),
                {"topic": topic, "id": credential_id},
            )


def _subject_uid(bundle: str) -> str | None:
    match = _CERTIFICATE.search(bundle or "")
    if match is None:
        return None
    try:
        certificate = x509.load_pem_x509_certificate(match.group(0).encode())
    except ValueError:
        return None
    uids = certificate.subject.get_attributes_for_oid(NameOID.USER_ID)
    return str(uids[0].value) if uids else None


def downgrade() -> None:
    op.drop_index("ix_audit_event_organization_at", "audit_event")
    op.drop_table("audit_event")
    op.drop_table("push_answer_window")
    op.drop_index("ix_provider_hold_probe_at", "provider_hold")
    op.drop_table("provider_hold")
    with op.batch_alter_table("device") as batch:
        batch.drop_column("token_invalid_ambiguous")
        batch.drop_column("token_invalid_fingerprint")
        batch.drop_column("token_invalid_status")
