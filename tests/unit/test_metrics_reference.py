"""docs/metrics.md is the reference of every metric mdmq defines: the same names, types and labels as the
code's, no more and no fewer."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
# Every module that defines metrics; importing them registers their collectors.
MODULES = (
    "api.metrics",
    "models.metrics",
    "scheduler.certificates",
    "scheduler.gauges",
    "scheduler.overview_gauges",
    "scheduler.runner",
    "workers.metrics",
    "workers.prometheus",
    "workers.providers.timing",
    "workers.queue_wait",
)
ROW = re.compile(r"^\| `(mdmq_[a-z0-9_]+)` \| (counter|gauge|histogram) \| ([^|]*) \|", re.MULTILINE)


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    return {
        name: (kind, frozenset(re.findall(r"`([a-z_]+)`", labels)))
        for name, kind, labels in ROW.findall(text)
    }


def defined() -> dict[str, tuple[str, frozenset[str]]]:
    for module in MODULES:
        importlib.import_module(module)
    found = {}
    for collector in list(REGISTRY._collector_to_names):  # the registry's own map: every collector once
        describe = getattr(collector, "describe", None)
        for family in describe() if describe else []:
            if not family.name.startswith("mdmq_"):
                continue
            name = f"{family.name}_total" if family.type == "counter" else family.name
            labels = frozenset(getattr(collector, "_labelnames", ()))
            found[name] = (family.type, labels)
    return found


def test_every_metric_in_the_code_is_in_the_reference_with_its_type_and_labels() -> None:
    code, docs = defined(), documented()
    assert len(code) >= 15
    assert sorted(set(code) - set(docs)) == [], "defined but not documented"
    assert sorted(set(docs) - set(code)) == [], "documented but defined nowhere"
    assert {n: code[n] for n in code} == {n: docs[n] for n in code}
