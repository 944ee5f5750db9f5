"""push_dead_answer: the devices whose dead-token answer a credential's window counts already, so that a
device pushed twice counts once

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = models.types.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "push_dead_answer",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("device_id", sa.String(24), primary_key=True),
        sa.Column("at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("push_dead_answer")
