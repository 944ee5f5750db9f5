"""push_attempt: each push a provider did not accept, with its answer and the deployment's next try

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = models.types.UTCDateTime(timezone=True)
PROVIDER = sa.Enum("apns", "fcm", "aosp", name="provider", native_enum=False, length=32)


def upgrade() -> None:
    op.create_table(
        "push_attempt",
        sa.Column("deployment_id", sa.String(length=24), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("provider", PROVIDER, nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("next_attempt_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("deployment_id", "at"),
    )


def downgrade() -> None:
    op.drop_table("push_attempt")
