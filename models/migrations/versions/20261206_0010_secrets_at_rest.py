"""secrets at rest: push magic widened for its encrypted form; existing secrets encrypted when this step has
a key and no release that cannot decrypt is still running

Expand only. The release reads plaintext and encrypted rows alike. Rows are encrypted here only when the
release step has a key (MDMQ_SECRET_KEY, MDMQ_SECRET_KEY_FILE, or the embedded mode's generated key) and
MDMQ_SECRET_PLAINTEXT_WRITES is off: for a rolling deploy beside the previous release (which reads plaintext
only) it is on, nothing is encrypted here, and `mdmq secrets rotate` encrypts the rows once the last process
of the previous release is gone (docs/operations.md, "Secrets at rest"). Running it again is harmless: rows
under the newest key are left as they are.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from config import load_settings
from models.secrets import key_ring_from_settings
from models.store.secrets import reseal_all

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger(__name__)


def upgrade() -> None:
    # Widening a VARCHAR rewrites nothing on PostgreSQL; the previous release writes the same values.
    with op.batch_alter_table("device") as batch:
        batch.alter_column(
            "push_magic", type_=sa.String(512), existing_type=sa.String(128), existing_nullable=True
        )
    url = context.config.get_main_option("sqlalchemy.url")
    ring = key_ring_from_settings(load_settings(**({"database_url": url} if url else {})))
    if ring is None:
        log.info("no secret key: secrets stay as they are")
        return
    if ring.plaintext_writes:
        log.warning("secrets left as they are: run `mdmq secrets rotate` once every process reads them")
        return
    done = reseal_all(op.get_bind(), ring=ring)
    encrypted = sum(done.touched.values())
    if encrypted:  # an operator should see that rows changed; a new database has none to change
        log.warning("encrypted %d secret rows", encrypted)
    else:
        log.info("no secret rows to encrypt")


def downgrade() -> None:
    # Encrypted push magic does not fit the old width: widened it stays.
    pass
