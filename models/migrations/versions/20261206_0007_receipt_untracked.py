"""push_receipt.untracked_at: when the AOSP push service stopped tracking a push before its stored expiry

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = models.types.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("push_receipt") as batch:
        batch.add_column(sa.Column("untracked_at", TS, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("push_receipt") as batch:
        batch.drop_column("untracked_at")
