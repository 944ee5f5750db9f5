"""Request bodies whose text reaches a text column: PostgreSQL's text cannot hold a NUL character, so a
string with one is refused as invalid input (400, naming the field) before the database fails on it (500)."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, model_validator


class StoredText(BaseModel):
    @model_validator(mode="after")
    def _no_nul(self) -> Self:
        for name, value in self:
            if isinstance(value, str) and "\x00" in value:
                raise ValueError(f"{name} may not contain a NUL character")
        return self
