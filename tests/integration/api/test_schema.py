"""Schemathesis over the whole OpenAPI document, on real HTTP against PostgreSQL: every operation with
generated requests (at least 5,000 in all), no 5xx, and no answer that breaks the document.

Its body generator also plants hostile JSON (NUL, lone surrogates, NaN, ±Infinity, numbers beyond a double
or 64 bits, nesting deeper than 32) at a random place in about half the bodies it generates: each of those
must be a 400 whose error points at the place.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from models.ids import ID_PATTERN, ORGANIZATION_ID_PATTERN
from models.json_values import INT_MAX, INT_MIN
from models.store import ensure_organization
from models.store.tokens import create_token
from tests.integration.api.conftest import Client
from workers.app import App

EVERY_PERMISSION = [
    "mdm.aosp.command.get", "mdm.deployment.create", "mdm.deployment.get", "mdm.deployment.cancel",
    "mdm.deployment.retry", "mdm.device.report", "mdm.credential.manage", "mdm.organization.manage",
]  # fmt: skip
# Per operation; the two whose bodies cost most to generate (a create's payloads, a check-in's error chains)
# fewer. Eight operations take generated input (the rest take none, and run once): some 5,000 requests.
EXAMPLES = 760
COSTLY_EXAMPLES = 250
COSTLY = (
    "POST /v1/organizations/{organizationId}/deployments",
    "POST /v1/organizations/{organizationId}/device-reports",
)
# Bodies of a few items reach every branch a body of thousands does, at a fraction of the generation time
# (the bounds themselves are tested in the API's own tests).
MAX_GENERATED_ITEMS = 3
PLACEHOLDER = "\x01hostile\x01"  # stands where the hostile JSON text goes, until the body is serialized


def _text_with(bad: str) -> st.SearchStrategy[str]:
    return st.builds(lambda a, b: json.dumps(a + bad + b), st.text(max_size=6), st.text(max_size=6))


_SURROGATE = st.integers(0xD800, 0xDFFF).map(lambda code: f"\\u{code:04x}")
HOSTILE: st.SearchStrategy[str] = st.one_of(
    _text_with("\x00"),
    _SURROGATE.map(lambda escape: f'"a{escape}"'),
    _text_with("\x00").map(lambda key: f"{{{key}: 1}}"),
    _SURROGATE.map(lambda escape: f'{{"{escape}": 1}}'),
    st.sampled_from(["NaN", "Infinity", "-Infinity"]),
    st.integers(309, 5_000).map(lambda exponent: f"1e{exponent}"),
    st.integers(309, 5_000).map(lambda exponent: f"-2.5E+{exponent}"),
    st.integers(min_value=INT_MAX + 1).map(str),
    st.integers(max_value=INT_MIN - 1).map(str),
    st.integers(20, 5_000).map(lambda digits: "9" * digits),
    st.integers(33, 2_000).map(lambda depth: "[" * depth + "]" * depth),
)


@st.composite
def _with_hostile(draw: st.DrawFn, body: Any) -> bytes:
    """`body` with a hostile value in place of one of its values (or added to one of its objects), as the
    JSON text a client would send: Python's JSON writer could not write most of them."""
    planted = copy.deepcopy(body)
    places = list(_places(planted))
    container, key = draw(st.sampled_from(places)) if places else (None, None)
    if container is None:
        planted = PLACEHOLDER
    elif isinstance(container, list):
        container[draw(st.integers(0, len(container) - 1))] = PLACEHOLDER
    else:
        container[key if key is not None else draw(st.text(max_size=5))] = PLACEHOLDER
    text = json.dumps(planted).replace(json.dumps(PLACEHOLDER), draw(HOSTILE))
    return text.encode("utf-8")


def _places(value: Any) -> Any:
    """Every container of `value` with a key of it (None: a new key), and (None, None) for the whole body."""
    yield None, None
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item, None
            yield from ((item, key) for key in item)
            stack.extend(item.values())
        elif isinstance(item, list) and item:
            yield item, 0
            stack.extend(item)


# Ids by a format of their own rather than by their pattern: drawing from a regular expression cost a fifth
# of the run. The organization is the token's own, or nearly every request would stop at "not found".
ID_FORMATS = {
    ID_PATTERN.pattern: ("mdmq-id", st.text("0123456789abcdefABCDEF", min_size=24, max_size=24)),
    ORGANIZATION_ID_PATTERN.pattern: ("mdmq-organization-id", st.just("acme")),
}


def _for_generation(node: Any) -> None:
    """The document as generated from: few items, and ids by their formats."""
    if isinstance(node, dict):
        if node.get("type") == "array":
            node["maxItems"] = min(node.get("maxItems", MAX_GENERATED_ITEMS), MAX_GENERATED_ITEMS)
        if node.get("additionalProperties") is True:
            node["maxProperties"] = MAX_GENERATED_ITEMS
        if node.get("pattern") in ID_FORMATS:
            node["format"] = ID_FORMATS[node.pop("pattern")][0]
        for child in node.values():
            _for_generation(child)
    elif isinstance(node, list):
        for child in node:
            _for_generation(child)


@pytest.mark.timeout(600)  # about a minute alone; a loaded CI machine may take a few
def test_every_operation_answers_within_its_document(client: Client, mdmq: App) -> None:
    with mdmq.session() as s:
        ensure_organization(s, organization_id="acme")
        token = create_token(s, organization_id="acme", permissions=EVERY_PERMISSION)[1]
    document = client.get("/openapi.json").json()
    _for_generation(document)
    for name, strategy in ID_FORMATS.values():
        schemathesis.openapi.format(name, strategy)
    schema = schemathesis.openapi.from_dict(document)
    schema.location = f"{client.base_url}/openapi.json"  # where its requests go, as `from_url` sets it

    @schema.hook
    def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
        if not isinstance(body, dict | list):
            return st.just(body)
        return st.booleans().flatmap(lambda plant: _with_hostile(body) if plant else st.just(body))

    headers = {"Authorization": f"Bearer {token}"}
    calls: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    hostile: Counter[str] = Counter()

    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]

        @given(case=operation.as_strategy())
        @settings(
            max_examples=COSTLY_EXAMPLES if operation.label in COSTLY else EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate],
        )
        def check(case: Any) -> None:
            label = case.operation.label
            calls[label] += 1
            # A well-formed request for a device this organization does not have is answered 400, as the
            # issue asks ("says which id"); schemathesis would expect 2xx or 404 for schema-valid data.
            response = case.call_and_validate(
                session=client.http, headers=headers, excluded_checks=[positive_data_acceptance]
            )
            statuses[response.status_code] += 1
            if isinstance(case.body, bytes):  # a hostile body: refused, naming where
                hostile[label] += 1
                assert response.status_code == 400, response.text[:300]
                assert "pointer" in response.json()["error"], response.text[:300]

        check()

    total = sum(calls.values())
    print(
        f"schemathesis: {total} requests over {len(calls)} operations, {sum(hostile.values())} of them with "
        f"hostile JSON; answers by status: {dict(sorted(statuses.items()))}; per operation: {dict(calls)}"
    )
    assert len(calls) >= 11, sorted(calls)
    assert total >= 5_000, calls
    assert not [status for status in statuses if status >= 500], statuses
    assert len(hostile) >= 5, f"every operation with a body got hostile ones: {hostile}"
