"""The encrypted columns read and written as stored, past their decryption: re-encryption under the newest
key (`mdmq secrets rotate`, migration 0010) and the test decryption every process does at start."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel import Session

from models.secrets import SEALED_PREFIX, CannotDecrypt, KeyRing, is_sealed

# Each encrypted column, read as the text it is stored as (no `SecretText` in between).
_STORED = {
    "push_credential": sa.table(
        "push_credential", sa.column("id", sa.String), sa.column("organization_id", sa.String),
        sa.column("secret", sa.Text), sa.column("updated_at", sa.DateTime),
    ),
    "device": sa.table(
        "device", sa.column("id", sa.String), sa.column("organization_id", sa.String),
        sa.column("push_magic", sa.Text),
    ),
}  # fmt: skip
SECRET_COLUMNS = {"push_credential": "secret", "device": "push_magic"}


class KeyCheck(StrEnum):
    """What the test decryption at start found."""

    decrypts = "decrypts"  # the newest encrypted row decrypts
    nothing_encrypted = "nothing_encrypted"  # no encrypted row yet: nothing to tell
    cannot_decrypt = "cannot_decrypt"  # an encrypted row no key of the ring decrypts


@dataclass
class Resealed:
    """One page of re-encryption: the last id taken (None: the table is done), the rows re-encrypted by
    organization, and the rows no key decrypts (left as they are)."""

    last_id: str | None
    touched: Counter[str] = field(default_factory=Counter)
    undecryptable: int = 0


def reseal_page(
    connection: Connection, *, ring: KeyRing, table: str, after_id: str = "", limit: int = 1_000
) -> Resealed:
    """Encrypt under the newest key the next `limit` rows of `table` (`push_credential` or `device`) after
    `after_id`, by id: plaintext rows and rows of an older key; rows under the newest key already are left.
    Idempotent. A row changed meanwhile (a new upload) is left to its writer: each update names the value
    it replaces."""
    stored, name = _STORED[table], SECRET_COLUMNS[table]
    value = stored.c[name]
    rows = connection.execute(
        sa.select(stored.c.id, stored.c.organization_id, value)
        .where(stored.c.id > after_id, value.is_not(None))
        .order_by(stored.c.id)
        .limit(limit)
    ).all()
    page = Resealed(last_id=rows[-1].id if len(rows) == limit else None)
    updates = []
    for row in rows:
        old = row[2]
        if ring.is_newest(old):
            continue
        try:
            updates.append({"_id": row.id, "_old": old, "_new": ring.seal(ring.open(old))})
        except CannotDecrypt:
            page.undecryptable += 1
            continue
        page.touched[row.organization_id] += 1
    if updates:
        statement = (
            sa.update(stored)
            .where(stored.c.id == sa.bindparam("_id"), value == sa.bindparam("_old"))
            .values({name: sa.bindparam("_new")})
        )
        connection.execute(statement, updates)
    return page


def reseal_all(connection: Connection, *, ring: KeyRing) -> Resealed:
    """`reseal_page` over every row of both tables, in the caller's transaction: for the migration."""
    total = Resealed(last_id=None)
    for table in SECRET_COLUMNS:
        after: str | None = ""
        while after is not None:
            page = reseal_page(connection, ring=ring, table=table, after_id=after)
            total.touched.update(page.touched)
            total.undecryptable += page.undecryptable
            after = page.last_id
    return total


def check_key(session: Session, *, ring: KeyRing | None) -> KeyCheck:
    """Decrypt the newest encrypted credential (or, without one, an encrypted push magic) with `ring`."""
    connection = session.connection()
    sample = _sealed_sample(connection, "push_credential") or _sealed_sample(connection, "device")
    if sample is None:
        return KeyCheck.nothing_encrypted
    try:
        if ring is None:
            raise CannotDecrypt()
        ring.open(sample)
    except CannotDecrypt:
        return KeyCheck.cannot_decrypt
    return KeyCheck.decrypts


def _sealed_sample(connection: Connection, table: str) -> str | None:
    """The newest encrypted credential; any encrypted push magic (the first found: the device table is
    large, and this runs at every start)."""
    stored = _STORED[table]
    value = stored.c[SECRET_COLUMNS[table]]
    statement = sa.select(value).where(value.startswith(SEALED_PREFIX)).limit(1)
    if table == "push_credential":
        statement = statement.order_by(stored.c.updated_at.desc())
    found = connection.execute(statement).scalar()
    return found if isinstance(found, str) and is_sealed(found) else None
