"""fair share: an organization's weight on the bulk lane, and the fair queue's rows for brokers without a
store of their own (RabbitMQ)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Nullable, no default: instant on PostgreSQL, and the previous release keeps working beside it.
    with op.batch_alter_table("organization") as batch:
        batch.add_column(sa.Column("fair_weight", sa.Integer(), nullable=True))
    op.create_table(
        "fair_organization",
        sa.Column("organization_id", sa.String(64), primary_key=True),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("rate_per_s", sa.Float(), nullable=True),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("booked_s", sa.Float(), nullable=False),
        sa.Column("tat_s", sa.Float(), nullable=False),
    )
    op.create_table(
        "fair_chunk",
        sa.Column("id", BIGINT_PK, primary_key=True, autoincrement=True),
        sa.Column("organization_id", sa.String(64), nullable=False),
        sa.Column("deployment_ids", JSON, nullable=False),
        sa.Column("ready_at_s", sa.Float(), nullable=False),
        sa.Column("claim", sa.String(64), nullable=True),
        sa.Column("claimed_at_s", sa.Float(), nullable=True),
    )
    op.create_index("ix_fair_chunk_org_ready", "fair_chunk", ["organization_id", "ready_at_s"])
    op.create_index("ix_fair_chunk_claim", "fair_chunk", ["claim"])


def downgrade() -> None:
    op.drop_index("ix_fair_chunk_claim", table_name="fair_chunk")
    op.drop_index("ix_fair_chunk_org_ready", table_name="fair_chunk")
    op.drop_table("fair_chunk")
    op.drop_table("fair_organization")
    with op.batch_alter_table("organization") as batch:
        batch.drop_column("fair_weight")
