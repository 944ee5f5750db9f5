"""scheduler_run: one row per run of a scheduler job, for its health and to prove one leader at a time;
an index on deployment.finished_at for the retention purge

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = models.types.UTCDateTime(timezone=True)
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "scheduler_run",
        sa.Column("id", BIGINT_PK, primary_key=True, autoincrement=True),
        sa.Column("job", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("ok", sa.Boolean(), nullable=True),
        sa.Column("work", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_scheduler_run_job_started", "scheduler_run", ["job", "started_at"])
    # CONCURRENTLY, outside the migration's transaction: building it must not block writes to deployment.
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_deployment_finished",
            "deployment",
            ["finished_at"],
            postgresql_where=sa.text("finished_at IS NOT NULL"),
            sqlite_where=sa.text("finished_at IS NOT NULL"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    op.drop_index("ix_deployment_finished", table_name="deployment")
    op.drop_index("ix_scheduler_run_job_started", table_name="scheduler_run")
    op.drop_table("scheduler_run")
