"""Writing a preprocessed split (the format :mod:`imgpipe.data.splits` reads): the image array
created at its full size and filled row by row, compacted when rows were skipped, then the labels
and metadata. Only preprocess uses it: editing it reruns preprocess and nothing that reads
splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imgpipe.io import write_json


def write_labels_and_meta(
    folder: Path,
    labels: list[int],
    classes: list[str],
    files: list[str],
    groups: list[str] | None = None,
) -> None:
    """The rest of a split beside its ``images.npy``; ``groups`` (the patient or clip of each
    row) only when the split was made by groups, so that evaluation can score and resample
    whole groups."""
    np.save(folder / "labels.npy", np.asarray(labels, dtype=np.int64))
    meta: dict[str, object] = {"classes": classes, "files": files}
    if groups is not None:
        meta["groups"] = groups
    write_json(folder / "meta.json", meta)


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
