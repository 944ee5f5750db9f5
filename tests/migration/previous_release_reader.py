# mypy: ignore-errors
"""What the PREVIOUS release's code reads of an organization's secrets: run as a script with the previous
release's tree first on PYTHONPATH (test_previous_release.py does that). It builds each stored credential as
the previous release's dispatch does and reads each device's push magic; it prints one JSON line: the
credentials' fingerprints by provider and the push magics.

Usage: python previous_release_reader.py DATABASE_URL ORGANIZATION_ID
"""

from __future__ import annotations

import json
import sys

from sqlmodel import Session, select
from workers.providers.rows import credential_from_row

from models.database import create_engine
from models.enums import Provider
from models.store.dispatch import push_credential
from models.tables import Device


def main(database_url: str, organization_id: str) -> None:
    engine = create_engine(database_url)
    with Session(engine) as s:
        fingerprints = {}
        for provider in Provider:
            row = push_credential(s, organization_id=organization_id, provider=provider)
            if row is not None:
                fingerprints[provider.value] = credential_from_row(row).fingerprint
        magics = [
            d.push_magic for d in s.exec(select(Device).where(Device.organization_id == organization_id))
        ]
    engine.dispose()
    print(json.dumps({"fingerprints": fingerprints, "magics": magics}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
