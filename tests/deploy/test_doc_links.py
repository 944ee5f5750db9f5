"""The README, docs/ and deploy/ (the runbook among them) link to files of the repository, figures to the
result files that produced them: every relative link must resolve, or a reader lands on nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "deploy").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _relative_links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    links = [m.group(1).split("#", 1)[0] for m in LINK.finditer(text)]
    return [link for link in links if link and not re.match(r"^[a-z][a-z0-9+.-]*:", link)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_of_a_page_resolves(page: Path) -> None:
    missing = [link for link in _relative_links(page) if not (page.parent / link).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to what is not in the repository: {missing}"


def test_the_readme_figures_link_to_committed_results() -> None:
    results = [link for link in _relative_links(ROOT / "README.md") if link.startswith("benchmarks/results/")]
    assert len(results) >= 4, "the figures table cites its result files"
