"""Moved to `workers.services.credential_rows` (turning a stored row into a credential is above the
providers); this name goes once no caller uses it."""

from workers.services.credential_rows import KINDS, credential_from_row, require_kind_of

__all__ = ["KINDS", "credential_from_row", "require_kind_of"]
