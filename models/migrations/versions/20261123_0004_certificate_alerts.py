"""alerted_days on push_credential and watched_certificate: the certificate watch alerts once per threshold

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("push_credential", "watched_certificate"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("alerted_days", sa.Integer(), nullable=True))


def downgrade() -> None:
    for table in ("push_credential", "watched_certificate"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("alerted_days")
