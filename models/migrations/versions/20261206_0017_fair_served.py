"""fair share counted in pushes: the position an organization's last take served, for the virtual time

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A take now moves a position on by its chunk's size, so the position it served can no longer be worked
    # back from the weight alone: the row keeps it. The default lets the previous release insert rows
    # beside it; the rows there are filled as that release's rule had it (a take moved on 1,000,000 // weight).
    with op.batch_alter_table("fair_organization") as batch:
        batch.add_column(sa.Column("served", sa.BigInteger(), nullable=False, server_default="0"))
    op.execute(
        "UPDATE fair_organization SET served = position - 1000000 / CASE WHEN weight > 1 THEN weight ELSE 1 END"
    )


def downgrade() -> None:
    with op.batch_alter_table("fair_organization") as batch:
        batch.drop_column("served")
