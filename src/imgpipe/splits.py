"""The on-disk format of a preprocessed split, written by preprocess and read by every later
stage: ``<split>/images.npy`` (``N x H x W x C`` uint8), ``labels.npy`` (int64) and
``meta.json`` (class names and the source file of every row).

Its own module because it is a dependency of every stage after preprocess: the data report or
the leak finder can change without retraining anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgpipe.errors import ImgpipeError
from imgpipe.io import read_json, write_json

SPLITS = ("train", "val", "test")
IMAGES_FILE = "images.npy"


@dataclass
class SplitArrays:
    """One split as arrays; ``images`` may be a read-only memory map."""

    images: np.ndarray  # N x H x W x C, uint8
    labels: np.ndarray  # N, int64
    classes: list[str]
    files: list[str] = field(default_factory=list)

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
        )
    except FileNotFoundError as exc:
        raise ImgpipeError(f"{folder}: not a preprocessed split ({exc.filename} missing)") from None


def write_labels_and_meta(
    folder: Path, labels: list[int], classes: list[str], files: list[str]
) -> None:
    """The rest of a split beside its ``images.npy``."""
    np.save(folder / "labels.npy", np.asarray(labels, dtype=np.int64))
    write_json(folder / "meta.json", {"classes": classes, "files": files})


def create_image_array(path: Path, shape: tuple[int, ...]) -> int:
    """Create ``path`` as a uint8 ``.npy`` of ``shape`` (sparse, zero-filled) for writers to fill
    at row offsets; return the header length. The header is padded generously so that a
    smaller row count can be written over it (:func:`compact_rows`)."""
    text = _npy_header_text(shape)
    length = -(-(len(_NPY_MAGIC) + 2 + len(text) + 32) // 64) * 64
    with path.open("wb") as handle:
        handle.write(_npy_header_bytes(text, length))
        handle.truncate(length + int(np.prod(shape)))
    return length


def compact_rows(
    path: Path, header: int, row_bytes: int, kept: list[int], row_shape: tuple[int, ...]
) -> None:
    """Move the kept rows together (skipped files left gaps), fix the header, cut the tail."""
    with path.open("r+b") as handle:
        for new, old in enumerate(kept):
            if new != old:
                handle.seek(header + old * row_bytes)
                row = handle.read(row_bytes)
                handle.seek(header + new * row_bytes)
                handle.write(row)
        handle.seek(0)
        handle.write(_npy_header_bytes(_npy_header_text((len(kept), *row_shape)), header))
        handle.truncate(header + len(kept) * row_bytes)


_NPY_MAGIC = b"\x93NUMPY\x01\x00"


def _npy_header_text(shape: tuple[int, ...]) -> bytes:
    return repr({"descr": "|u1", "fortran_order": False, "shape": shape}).encode()


def _npy_header_bytes(text: bytes, length: int) -> bytes:
    body = text.ljust(length - len(_NPY_MAGIC) - 2 - 1) + b"\n"
    return _NPY_MAGIC + len(body).to_bytes(2, "little") + body
