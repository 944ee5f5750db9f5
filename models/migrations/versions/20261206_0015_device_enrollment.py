"""device enrollment: the push topic an Apple device enrolled with, labels, when it was last updated and when
it was unenrolled (a soft delete: the row stays for its deployments' history)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import models.types

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = models.types.UTCDateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # Nullable, no default: instant on PostgreSQL however many devices there are, and the previous release,
    # which writes none of them, keeps working during a rolling deploy.
    with op.batch_alter_table("device") as batch:
        batch.add_column(sa.Column("topic", sa.String(255), nullable=True))
        batch.add_column(sa.Column("labels", JSON, nullable=True))
        batch.add_column(sa.Column("updated_at", TS, nullable=True))
        batch.add_column(sa.Column("unenrolled_at", TS, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("device") as batch:
        batch.drop_column("unenrolled_at")
        batch.drop_column("updated_at")
        batch.drop_column("labels")
        batch.drop_column("topic")
