"""Identifiers: 24 hex characters, time-ordered like MongoDB ObjectIds, and the patterns the API checks."""

from __future__ import annotations

import os
import re
import threading
import time

ID_PATTERN = re.compile(r"^[a-fA-F0-9]{24}$")
ORGANIZATION_ID_PATTERN = re.compile(r"^(([a-fA-F0-9]{24})|([a-zA-Z0-9\-]{3,}))$")


class _IdSource:
    """5 random bytes per process and a 3-byte counter, reseeded in a forked child so that two workers forked
    from one parent never hand out the same ids."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.lock = threading.Lock()
        self.random_hex = os.urandom(5).hex()
        self.counter = int.from_bytes(os.urandom(3), "big")

    def reserve(self, n: int) -> tuple[str, int]:
        with self.lock:
            start, self.counter = self.counter, self.counter + n
            return self.random_hex, start


_source = _IdSource()
os.register_at_fork(after_in_child=_source.reseed)


def new_ids(n: int) -> list[str]:
    """`n` new ids: 4 bytes of seconds, the process's random bytes, a counter. They sort by creation time."""
    random_hex, start = _source.reserve(n)
    prefix = f"{int(time.time()) & 0xFFFFFFFF:08x}{random_hex}"
    return [f"{prefix}{(start + i) & 0xFFFFFF:06x}" for i in range(n)]


def new_id() -> str:
    return new_ids(1)[0]


def is_id(value: str) -> bool:
    return ID_PATTERN.fullmatch(value) is not None


def is_organization_id(value: str) -> bool:
    return ORGANIZATION_ID_PATTERN.fullmatch(value) is not None


def id_run(first_id: str, count: int) -> list[str]:
    """The `count` ids of the `new_ids` call whose first id is `first_id`: one prefix, a counter that runs on
    (and wraps) from the first's. A record of a whole create keeps two values, not every id."""
    prefix, start = first_id[:18], int(first_id[18:], 16)
    return [f"{prefix}{(start + i) & 0xFFFFFF:06x}" for i in range(count)]
