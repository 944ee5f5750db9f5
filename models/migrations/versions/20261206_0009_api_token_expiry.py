"""api_token expiry and last use: every token expires; those created before get 90 days from the upgrade

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = models.types.UTCDateTime(timezone=True)
LEGACY_LIFETIME = timedelta(days=90)  # what a token created before expiries has left after the upgrade


def upgrade() -> None:
    with op.batch_alter_table("api_token") as batch:
        batch.add_column(sa.Column("expires_at", TS, nullable=True))
        batch.add_column(sa.Column("last_used_at", TS, nullable=True))
        batch.add_column(sa.Column("legacy", sa.Boolean(), nullable=True))
    op.execute(back_fill(datetime.now(UTC)))


def back_fill(now: datetime) -> sa.Update:
    """Idempotent: only rows without an expiry get one, and a second run finds none."""
    token = sa.table("api_token", sa.column("expires_at", TS), sa.column("legacy", sa.Boolean()))
    return (
        token.update()
        .where(token.c.expires_at.is_(None))
        .values(expires_at=now + LEGACY_LIFETIME, legacy=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("api_token") as batch:
        batch.drop_column("legacy")
        batch.drop_column("last_used_at")
        batch.drop_column("expires_at")
