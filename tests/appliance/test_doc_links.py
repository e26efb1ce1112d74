"""Every relative link in the README and docs/ names a file that exists, and every #anchor a
heading of the page it points to (GitHub's anchor rule), so the docs do not point nowhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support import ROOT

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation but hyphens and underscores dropped, spaces
    to hyphens (headings inside code blocks are not headings)."""
    ids = set()
    for line in FENCE.sub("", markdown).splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            ids.add(text.replace(" ", "-"))
    return ids


def _pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "SECURITY.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text()
    broken = []
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text()):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, broken


def test_anchor_rule() -> None:
    assert _anchors("## The client\n```\n## not a heading\n```\n### DOV4CL (method dov4cl, K = 50)") == \
        {"the-client", "dov4cl-method-dov4cl-k--50"}
