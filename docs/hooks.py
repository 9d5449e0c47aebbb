"""MkDocs hook: the site's home page is README.md, with its links into ``docs/`` rewritten to
be relative to the docs folder, so the README and the site's front page are one text."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace ``index.md`` by the README (the other pages pass through unchanged)."""
    if page.file.src_uri != "index.md":
        return markdown
    readme = Path(config.config_file_path).parent / "README.md"
    return readme.read_text(encoding="utf-8").replace("](docs/", "](")
