"""The documentation stays true to the tree: links resolve, and the module map names every
module there is (and none that is gone)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", heading).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    """Every relative link and anchor of the README and docs resolves."""
    for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if link.startswith(("http://", "https://")):
            continue
        target, _, anchor = link.partition("#")
        path = page.parent / target if target else page
        assert path.exists(), f"{page.name}: {link} does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{page.name}: {link} has no such heading"


def test_the_module_map_names_every_module() -> None:
    """The module map names every module there is, and none that is gone."""
    text = (ROOT / "docs" / "development.md").read_text()
    table = text[text.index("## Module map") :]
    named = set(re.findall(r"`(\w+)(?:\.py)?`", table))
    package = ROOT / "tinybird_export"
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {p.stem for p in (package / "local").glob("_*.py") if p.stem != "__init__"}
    modules -= {"__main__"}
    assert modules - named == set(), "modules missing from docs/development.md"
    stale = {n for n in named if n.startswith("_") and n not in modules and n != "__init__"}
    assert stale == set(), "docs/development.md names modules that do not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_file_path_named_exists(page: Path) -> None:
    """A path in backticks (`tests/offline/sitecustomize.py`) names a file of the tree."""
    text = page.read_text()
    named = re.findall(r"`((?:tests|examples|bench|docs|tinybird_export)/[\w./-]+\.\w+)`", text)
    missing = [path for path in named if not (ROOT / path).exists()]
    assert missing == [], f"{page.name} names files that do not exist"


def test_every_test_says_what_it_checks() -> None:
    """Each test function has a docstring: the behaviour it holds, in a line."""
    undocumented = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if node.name.startswith("test_") and not ast.get_docstring(node):
                undocumented.append(f"{path.relative_to(ROOT)}::{node.name}")
    assert undocumented == []
