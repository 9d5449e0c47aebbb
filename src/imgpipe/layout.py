"""The ImageFolder layout every data stage agrees on: ``<class>/<image>`` or
``<split>/<class>/<image>``, and the names operating systems and archivers leave behind that
are never data."""

from __future__ import annotations

from pathlib import Path

# Names operating systems and archivers leave in folders; never data.
JUNK_NAMES = frozenset({"Thumbs.db", "desktop.ini", "__MACOSX"})
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "test": "test"}


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
