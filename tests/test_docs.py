"""Every relative link in the README and the docs points at a file (and heading) that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("distributed/*.md"),
               *REPO.glob("benchmarks/results/**/README.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")}


def broken_links(doc: Path) -> list[str]:
    """The relative links of ``doc`` whose file, or whose heading in a Markdown file, does not exist."""
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
            broken.append(target)
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_relative_links_resolve(doc):
    assert not broken_links(doc), f"{doc.relative_to(REPO)}: broken links {broken_links(doc)}"


def test_the_checker_finds_missing_files_and_headings(tmp_path):
    (tmp_path / "b.md").write_text("# Sweep cost (2 cores)\n")
    doc = tmp_path / "a.md"
    doc.write_text("# Top\n[ok](a.md#top) [ok](b.md#sweep-cost-2-cores) [ok](#top) [web](https://x.org/y) "
                   "[missing](c.md) ![img](d.png) [bad anchor](b.md#nope)\n")
    assert broken_links(doc) == ["c.md", "d.png", "b.md#nope"]
