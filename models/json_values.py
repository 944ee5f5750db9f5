"""What the JSON columns store: values that PostgreSQL's JSONB and SQLite's JSON text both hold and give
back alike, and where the first value that does not fit sits, as an RFC 6901 pointer.

JSONB refuses a NUL character (`\\u0000`), a lone UTF-16 surrogate, NaN and ±Infinity; SQLite keeps them and
the API then fails to answer with them. A number beyond a double's range is read as Infinity. Integers are
bounded to 64 bits (signed): what a bigint column and the JSON readers of devices and consoles read exactly;
JSONB itself would take more digits, but nothing on the way out would read them as one number. Nesting is
bounded to `MAX_DEPTH` containers, the outermost counted as one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 32
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
BEYOND_64_BITS = "an integer beyond 64 bits (signed)"
_UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")
_NUL = "a NUL character (\\u0000)"


@dataclass(frozen=True)
class Refused:
    """A value a reader refused while parsing, kept in the document so that the walk can say where it sat."""

    reason: str


@dataclass(frozen=True)
class Unstorable:
    """The first value that does not fit: where (an RFC 6901 pointer) and why, never the value itself."""

    pointer: str
    reason: str


def first_unstorable(value: Any, *, max_depth: int = MAX_DEPTH) -> Unstorable | None:
    """The first value of `value` (in document order) a JSON column cannot store, or None."""
    found = _walk(value, 1, max_depth)
    if found is None:
        return None
    path, reason = found
    return Unstorable("".join(f"/{_escape(part)}" for part in reversed(path)), reason)


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored (in a JSON column or a text column), or None."""
    if text.isascii():  # constant time in CPython: most text is ASCII, and only NUL can spoil it
        return _NUL if "\x00" in text else None
    bad = _UNSTORABLE_TEXT.search(text)
    if bad is None:
        return None
    return _NUL if bad.group() == "\x00" else "a lone surrogate (not Unicode text)"


# A path is built only on the way back from a problem, innermost part first.
Found = tuple[list[str | int], str]


def _walk(value: Any, depth: int, max_depth: int) -> Found | None:
    if isinstance(value, str):
        reason = text_problem(value)
        return None if reason is None else ([], f"{reason} in a string")
    if isinstance(value, dict):
        return _walk_children(value.items(), depth, max_depth, keyed=True)
    if isinstance(value, list | tuple):
        return _walk_children(enumerate(value), depth, max_depth, keyed=False)
    return _scalar_problem(value)


def _key_problem(key: Any) -> str | None:
    if not isinstance(key, str):
        return f"a key that is not a string ({type(key).__name__})"
    reason = text_problem(key)
    return None if reason is None else f"{reason} in a key"


def _walk_children(
    children: Iterable[tuple[Any, Any]], depth: int, max_depth: int, *, keyed: bool
) -> Found | None:
    """An object's (key, value) or an array's (index, item) pairs, in order; `keyed`: the keys are checked."""
    if depth > max_depth:
        return [], f"nested deeper than {max_depth} arrays and objects"
    for part, item in children:
        if keyed and not (type(part) is str and part.isascii() and "\x00" not in part):  # inline: common
            problem = _key_problem(part)
            if problem is not None:  # the pointer stops at the object: the key is no path to echo
                return [], problem
        if type(item) is str and item.isascii() and "\x00" not in item:
            continue
        found = _walk(item, depth + 1, max_depth)
        if found is not None:
            found[0].append(part)
            return found
    return None


def _scalar_problem(value: Any) -> Found | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if INT_MIN <= value <= INT_MAX else ([], BEYOND_64_BITS)
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        name = "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
        return [], f"{name} is not a JSON number"
    if isinstance(value, Refused):
        return [], value.reason
    return [], f"not a JSON value ({type(value).__name__})"


def _escape(part: str | int) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")
