"""idempotency_key: create requests' keys and answers; unsent_create: creates whose dispatch messages may not
have gone out, for the relay

Expand only: two new tables the previous release never reads.

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = "0013"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = models.types.UTCDateTime(timezone=True)
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "idempotency_key",
        sa.Column("organization_id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("claim", sa.String(32), nullable=False),
        sa.Column("locked_until", TS, nullable=False),
        sa.Column("answer_status", sa.Integer(), nullable=True),
        sa.Column("answer", models.types.JSON, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )
    op.create_index("ix_idempotency_key_expires", "idempotency_key", ["expires_at"])
    op.create_table(
        "unsent_create",
        sa.Column("id", BIGINT_PK, primary_key=True, autoincrement=True),
        sa.Column("organization_id", sa.String(64), nullable=False),
        sa.Column("first_id", sa.String(24), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_unsent_create_created", "unsent_create", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_unsent_create_created", table_name="unsent_create")
    op.drop_table("unsent_create")
    op.drop_index("ix_idempotency_key_expires", table_name="idempotency_key")
    op.drop_table("idempotency_key")
