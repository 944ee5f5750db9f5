"""rollout: every create request is one rollout, and each deployment names the rollout it came in

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = models.types.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rollout",
        sa.Column("id", sa.String(24), primary_key=True),
        sa.Column("organization_id", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_rollout_org_created", "rollout", ["organization_id", "created_at"])
    with op.batch_alter_table("deployment") as batch:
        batch.add_column(sa.Column("rollout_id", sa.String(24), nullable=True))
    # Partial, as the receipt's: deployments created before rollouts have none.
    op.create_index(
        "ix_deployment_rollout_status",
        "deployment",
        ["rollout_id", "status"],
        postgresql_where=sa.text("rollout_id IS NOT NULL"),
        sqlite_where=sa.text("rollout_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_deployment_rollout_status", table_name="deployment")
    with op.batch_alter_table("deployment") as batch:
        batch.drop_column("rollout_id")
    op.drop_index("ix_rollout_org_created", table_name="rollout")
    op.drop_table("rollout")
