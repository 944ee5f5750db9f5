"""fair queue lanes: each lane (bulk, paced) keeps its own chunks, turns and pacing

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PRIMARY_KEY = "fair_organization_pkey"  # PostgreSQL's name for the key 0016 created unnamed
# The same name for it in SQLite's copy, which reflects the key unnamed, so that both drop it alike.
NAMING = {"pk": "%(table_name)s_pkey"}


def _lane() -> sa.Column[str]:
    return sa.Column("lane", sa.String(16), nullable=False, server_default="bulk")


def upgrade() -> None:
    # The rows there are the bulk lane's (the only lane there was). The default lets the previous release
    # run beside it: its rows, which name no lane, are the bulk lane's too, and its insert of an
    # organization's row still conflicts with the row (bulk, organization) the key now holds. That release
    # reads an organization's row by its id alone and takes a chunk of any lane, so the paced lane is to be
    # put in only once it is gone (`paced_lane_max_rate` 0 until then).
    with op.batch_alter_table("fair_organization", naming_convention=NAMING) as batch:
        batch.add_column(_lane())
        batch.drop_constraint(PRIMARY_KEY, type_="primary")
        batch.create_primary_key(PRIMARY_KEY, ["lane", "organization_id"])
    # Built in place, not CONCURRENTLY: fair_chunk holds a row per chunk waiting, a few thousand at most.
    with op.batch_alter_table("fair_chunk") as batch:
        batch.add_column(_lane())
        batch.drop_index("ix_fair_chunk_org_ready")
        batch.create_index("ix_fair_chunk_lane_org_ready", ["lane", "organization_id", "ready_at_s"])


def downgrade() -> None:
    # One queue again: the chunks all in it; an organization's paced row kept only where it has no bulk one.
    op.execute(
        "DELETE FROM fair_organization WHERE lane <> 'bulk' AND organization_id IN "
        "(SELECT organization_id FROM fair_organization WHERE lane = 'bulk')"
    )
    with op.batch_alter_table("fair_chunk") as batch:
        batch.drop_index("ix_fair_chunk_lane_org_ready")
        batch.create_index("ix_fair_chunk_org_ready", ["organization_id", "ready_at_s"])
        batch.drop_column("lane")
    with op.batch_alter_table("fair_organization", naming_convention=NAMING) as batch:
        batch.drop_constraint(PRIMARY_KEY, type_="primary")
        batch.create_primary_key(PRIMARY_KEY, ["organization_id"])
        batch.drop_column("lane")
