"""The README and the documentation site stay true: the site builds strictly, the code map
matches the tree, every params example works when pasted over params.yaml, and the README stays
short enough to read in five minutes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from imgpipe.params import parse_params
from tests.conftest import REPO_ROOT

DOCS = REPO_ROOT / "docs"
PACKAGE = REPO_ROOT / "src" / "imgpipe"
MARKER = "<!-- params-example -->"
# A fenced yaml block and the line before it (where a params example carries its marker).
YAML_BLOCK = re.compile(r"(?m)^(?P<before>[^\n]*)\n```ya?ml\n(?P<body>.*?)^```", re.DOTALL)
README_MAX_LINES = 250


def markdown_files() -> list[Path]:
    return [REPO_ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def committed_params() -> dict[str, Any]:
    params: dict[str, Any] = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    return params


def yaml_blocks() -> list[tuple[str, bool, str]]:
    """Every fenced yaml block of README.md and docs/: (where, marked, text)."""
    blocks = []
    for path in markdown_files():
        text = path.read_text(encoding="utf-8")
        for match in YAML_BLOCK.finditer(text):
            line = text[: match.start("body")].count("\n")
            where = f"{path.relative_to(REPO_ROOT)}:{line}"
            blocks.append((where, match["before"].strip() == MARKER, match["body"]))
    return blocks


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """A broken link or anchor, a page left out of the nav or a missing snippet fails."""
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    home = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "Your photos" in home  # the home page is the README
    # every page is served from the site itself (no Google Fonts, no CDN): it reads offline
    external = re.findall(r'<(?:link|script)[^>]+(?:href|src)="(?:https?:)?//[^"]*"', home)
    assert external == [], external


def test_the_readme_is_short() -> None:
    lines = len((REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_the_code_map_lists_every_module_and_nothing_else() -> None:
    text = (DOCS / "code-map.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`(imgpipe/(?:\w+/)*\w+\.py)`", text))
    listed_packages = set(re.findall(r"`(imgpipe/\w+/)`", text))
    modules = {
        path.relative_to(PACKAGE.parent).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py"
    }
    packages = {f"imgpipe/{init.parent.name}/" for init in PACKAGE.glob("*/__init__.py")}
    assert sorted(modules - listed) == [], "modules missing from docs/code-map.md"
    assert sorted(listed - modules) == [], "docs/code-map.md lists modules that do not exist"
    assert sorted(packages - listed_packages) == [], "sub-packages missing from docs/code-map.md"
    assert sorted(listed_packages - packages) == [], "docs/code-map.md lists missing packages"


def test_params_examples_are_marked() -> None:
    """A yaml block that sets keys of params.yaml is an example someone will paste: it must
    carry the marker, so that the next test checks it."""
    top_level = set(committed_params())
    unmarked = []
    for where, marked, body in yaml_blocks():
        content = yaml.safe_load(body)
        if not marked and isinstance(content, dict) and set(content) & top_level:
            unmarked.append(where)
    assert unmarked == [], f"params examples without {MARKER}: {unmarked}"


@pytest.mark.parametrize(
    ("where", "body"), [(w, b) for w, marked, b in yaml_blocks() if marked], ids=lambda v: v
)
def test_params_example_works_when_pasted(where: str, body: str) -> None:
    """Pasted over params.yaml as a person would: each top-level key of the example (a whole
    section, for a section) replaces the committed one; the result must validate."""
    example = yaml.safe_load(body)
    assert isinstance(example, dict), f"{where}: not a mapping of params"
    unknown = set(example) - set(committed_params())
    assert unknown == set(), f"{where}: keys that params.yaml does not have: {sorted(unknown)}"
    parse_params({**committed_params(), **example}, source=where)


def test_there_are_params_examples() -> None:
    assert sum(marked for _, marked, _ in yaml_blocks()) >= 4
