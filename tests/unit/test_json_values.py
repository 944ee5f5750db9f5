"""What a JSON column can hold, and the pointer to the first value it cannot: the bounds exactly."""

from __future__ import annotations

import json
import math

import pytest

from api.strict_json import unstorable
from models.json_values import INT_MAX, INT_MIN, MAX_DEPTH, Unstorable, first_unstorable


def _nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_values_at_the_bounds_are_taken() -> None:
    assert (
        first_unstorable({"ids": [INT_MIN, INT_MAX], "x": 1.7e308, "tiny": 5e-324, "deep": _nested(31)})
        is None
    )
    assert first_unstorable({"text": "é ✓ 😀", "none": None, "yes": True}) is None
    assert unstorable(json.dumps({"deep": _nested(MAX_DEPTH - 1), "n": INT_MIN}).encode()) is None


@pytest.mark.parametrize(
    ("value", "pointer", "reason"),
    [
        ({"a": [1, {"b": "x\x00"}]}, "/a/1/b", "a NUL character (\\u0000) in a string"),
        ({"a/b~c": math.nan}, "/a~1b~0c", "NaN is not a JSON number"),
        ({"k": {"\ud800": 1}}, "/k", "a lone surrogate (not Unicode text) in a key"),
        ([math.inf, -math.inf], "/0", "Infinity is not a JSON number"),
        ({"n": INT_MAX + 1}, "/n", "an integer beyond 64 bits (signed)"),
        ({"n": INT_MIN - 1}, "/n", "an integer beyond 64 bits (signed)"),
        (
            {"deep": _nested(MAX_DEPTH)},
            "/deep" + "/0" * (MAX_DEPTH - 1),
            "nested deeper than 32 arrays and objects",
        ),
        ("\udfff", "", "a lone surrogate (not Unicode text) in a string"),
        ({"when": object()}, "/when", "not a JSON value (object)"),
    ],
)
def test_the_first_value_that_does_not_fit_is_named_by_its_pointer(
    value: object, pointer: str, reason: str
) -> None:
    assert first_unstorable(value) == Unstorable(pointer, reason)


@pytest.mark.parametrize(
    ("body", "pointer", "reason"),
    [
        (b'{"a": [1e999]}', "/a/0", "a number beyond the range of a double"),
        (b'{"a": -Infinity}', "/a", "-Infinity is not a JSON number"),
        (b'[1, "\xed\xa0\x80"]', "/1", "a lone surrogate (not Unicode text) in a string"),
        (b'{"n": ' + b"1" * 5000 + b"}", "/n", "an integer beyond 64 bits (signed)"),
        (
            b'{"s": "[{", "d": ' + b"[" * 3000 + b"]" * 3000 + b"}",
            "/d" + "/0" * 31,
            "nested deeper than 32 arrays and objects",
        ),
    ],
)
def test_a_request_body_is_read_strictly(body: bytes, pointer: str, reason: str) -> None:
    assert unstorable(body) == Unstorable(pointer, reason)


def test_a_body_that_is_not_json_is_left_to_the_route() -> None:
    assert unstorable(b"{not json") is None
    assert unstorable(b'"\xff"') is None
