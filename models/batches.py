"""Long id lists cut into batches: one statement, or one message, per batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

# Ids per statement: far under SQLite's 32,766 and PostgreSQL's 65,535 bind parameters.
IDS_PER_STATEMENT = 5_000


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """`items` in consecutive slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
