"""The on-disk format of a preprocessed split, written by preprocess and read by every later
stage: ``<split>/images.npy`` (``N x H x W x C`` uint8), ``labels.npy`` (int64) and
``meta.json`` (class names, the source file of every row and, when the split was made by
groups, the group of every row).

Its own module because it is a dependency of every stage after preprocess: the data report or
the leak finder can change without retraining anything. The writer, which only preprocess uses,
is :mod:`imgpipe.data.split_writer`, so editing it reruns preprocess alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgpipe.errors import ImgpipeError
from imgpipe.io import read_json

SPLITS = ("train", "val", "test")
IMAGES_FILE = "images.npy"


@dataclass
class SplitArrays:
    """One split as arrays; ``images`` may be a read-only memory map."""

    images: np.ndarray  # N x H x W x C, uint8
    labels: np.ndarray  # N, int64
    classes: list[str]
    files: list[str] = field(default_factory=list)
    groups: list[str] | None = None  # patient/clip of each row; None: every image on its own

    def __len__(self) -> int:
        return len(self.labels)


def load_split(folder: Path) -> SplitArrays:
    """Open a split written by preprocess; images are memory-mapped, read-only."""
    try:
        meta = read_json(folder / "meta.json")
        return SplitArrays(
            images=np.load(folder / IMAGES_FILE, mmap_mode="r"),
            labels=np.load(folder / "labels.npy"),
            classes=list(meta["classes"]),
            files=list(meta["files"]),
            groups=list(meta["groups"]) if "groups" in meta else None,
        )
    except FileNotFoundError as exc:
        raise ImgpipeError(f"{folder}: not a preprocessed split ({exc.filename} missing)") from None
