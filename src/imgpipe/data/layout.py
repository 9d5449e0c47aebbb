"""The ImageFolder layout every data stage agrees on: ``<class>/<image>`` or
``<split>/<class>/<image>``, and the names operating systems and archivers leave behind that
are never data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Names operating systems and archivers leave in folders; never data.
JUNK_NAMES = frozenset({"Thumbs.db", "desktop.ini", "__MACOSX"})
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
# What download learned about the source that the data report shows (hidden: never a class).
SOURCE_NOTES = ".imgpipe-source.json"


def is_junk(name: str) -> bool:
    """OS and archiver leftovers (``.DS_Store``, ``._*``, ``Thumbs.db``, ...), hidden files."""
    return name.startswith(".") or name in JUNK_NAMES


def split_folders(root: Path) -> dict[str, Path]:
    """The split folders of a pre-split tree (``{"train": ..., "val": ..., "test": ...}``).

    A tree counts as pre-split when its top-level folders are all split names and include
    ``train``; otherwise it is ``<class>/<image>`` and this returns ``{}``.
    """
    folders = [p for p in root.iterdir() if p.is_dir() and not is_junk(p.name)]
    names = {p.name.lower() for p in folders}
    if "train" not in names or not names <= SPLIT_ALIASES.keys():
        return {}
    return {SPLIT_ALIASES[p.name.lower()]: p for p in sorted(folders)}


def has_junk_part(path: Path, root: Path) -> bool:
    """Whether ``path`` is, or lies under, OS junk below ``root``."""
    return any(is_junk(part) for part in path.relative_to(root).parts)


def files_below(folder: Path) -> list[Path]:
    """Every file below ``folder``, at any depth, sorted, OS junk (and what lies under it) left
    out."""
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and not has_junk_part(p, folder)]


def read_source_notes(raw_root: Path) -> dict[str, Any]:
    """What download noted about the source (:data:`SOURCE_NOTES`), or nothing."""
    notes = raw_root / SOURCE_NOTES
    return json.loads(notes.read_text(encoding="utf-8")) if notes.is_file() else {}
