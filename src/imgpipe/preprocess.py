"""The ``preprocess`` stage's library: ImageFolder tree -> split, decoded, resized uint8 arrays.

Each split is written to ``<out>/<split>/`` as ``images.npy`` (``N x H x W x C`` uint8, written
incrementally through a memory map, so memory stays bounded), ``labels.npy`` (int64) and
``meta.json`` (class names and the source file of every row).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from imgpipe.data import is_junk, split_folders
from imgpipe.errors import ImgpipeError
from imgpipe.images import ImageDecodeError, decode_image
from imgpipe.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class PreprocessError(ImgpipeError):
    """The raw data cannot be turned into train/val/test splits."""


@dataclass(frozen=True)
class Sample:
    path: Path  # relative to the raw root, for reports
    label: int


@dataclass
class SplitArrays:
    """One split as arrays; ``images`` may be a read-only memory map."""

    images: np.ndarray  # N x H x W x C, uint8
    labels: np.ndarray  # N, int64
    classes: list[str]
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def list_samples(root: Path) -> tuple[list[str], dict[str | None, list[Sample]]]:
    """Class names (sorted folder names) and the samples of each pre-made split.

    Returns:
        ``(classes, samples)`` where ``samples`` maps ``"train"``/``"val"``/``"test"`` to their
        samples for a pre-split tree, or ``None`` to all samples for an unsplit one. Files in
        nested folders under a class belong to that class.
    """
    pre_split = split_folders(root)
    split_roots: dict[str | None, Path] = (
        {name: path for name, path in pre_split.items()} if pre_split else {None: root}
    )
    classes = sorted(
        {
            folder.name
            for split_root in split_roots.values()
            for folder in split_root.iterdir()
            if folder.is_dir() and not is_junk(folder.name)
        }
    )
    if not classes:
        raise PreprocessError(f"{root}: no class folders found")
    index = {name: i for i, name in enumerate(classes)}
    samples: dict[str | None, list[Sample]] = {}
    for split, split_root in split_roots.items():
        samples[split] = [
            Sample(path.relative_to(root), index[class_dir.name])
            for class_dir in sorted(split_root.iterdir())
            if class_dir.is_dir() and not is_junk(class_dir.name)
            for path in sorted(class_dir.rglob("*"))
            if path.is_file() and not any(is_junk(p) for p in path.relative_to(root).parts)
        ]
    return classes, samples


def assign_splits(
    samples: dict[str | None, list[Sample]],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, list[Sample]]:
    """Keep a source's own splits; split the rest stratified by class with ``seed``.

    A pre-split source without a validation split gets one carved from its training split.
    """
    if None in samples:
        rest, test = _stratified(samples[None], test_fraction, seed, "test")
        train, val = _stratified(rest, val_fraction / (1 - test_fraction), seed, "val")
        return {"train": train, "val": val, "test": test}
    train = samples.get("train", [])
    val = samples.get("val") or []
    if not val:
        train, val = _stratified(train, val_fraction, seed, "val")
    test = samples.get("test") or []
    if not test:
        raise PreprocessError("the source is pre-split but has no test/ folder")
    return {"train": train, "val": val, "test": test}


def _stratified(
    samples: list[Sample], fraction: float, seed: int, name: str
) -> tuple[list[Sample], list[Sample]]:
    labels = [s.label for s in samples]
    try:
        kept, taken = train_test_split(
            samples, test_size=fraction, stratify=labels, random_state=seed
        )
    except ValueError as exc:
        raise PreprocessError(
            f"cannot carve a stratified {name} split of {fraction:.0%} from {len(samples)} "
            f"images ({dict(Counter(labels))} per class index): {exc}"
        ) from None
    return sorted(kept, key=_order), sorted(taken, key=_order)


def _order(sample: Sample) -> tuple[int, str]:
    return sample.label, sample.path.as_posix()


def write_split(
    raw_root: Path,
    samples: list[Sample],
    classes: list[str],
    destination: Path,
    *,
    image_size: int,
    channels: int,
) -> list[dict[str, str]]:
    """Decode, resize and write one split; return the files skipped, each with its reason."""
    skipped: list[dict[str, str]] = []
    with atomic_path(destination) as temporary:
        temporary.mkdir()
        images = np.lib.format.open_memmap(
            temporary / "images.npy",
            mode="w+",
            dtype=np.uint8,
            shape=(len(samples), image_size, image_size, channels),
        )
        labels: list[int] = []
        files: list[str] = []
        for sample in tqdm(samples, desc=f"preprocess {destination.name}", unit="img"):
            try:
                pixels = decode_image(raw_root / sample.path, image_size, channels)
            except ImageDecodeError as reason:
                skipped.append({"file": sample.path.as_posix(), "reason": str(reason)})
                continue
            images[len(labels)] = pixels
            labels.append(sample.label)
            files.append(sample.path.as_posix())
        images.flush()
        del images
        if skipped:  # drop the unused tail rows reserved for skipped files
            _truncate_rows(temporary / "images.npy", len(labels))
        np.save(temporary / "labels.npy", np.asarray(labels, dtype=np.int64))
        write_json(temporary / "meta.json", {"classes": classes, "files": files})
    return skipped


def _truncate_rows(path: Path, rows: int) -> None:
    full = np.load(path, mmap_mode="r")
    kept = np.lib.format.open_memmap(
        path.with_suffix(".part.npy"), mode="w+", dtype=full.dtype, shape=(rows, *full.shape[1:])
    )
    kept[:] = full[:rows]
    kept.flush()
    del full, kept
    path.with_suffix(".part.npy").replace(path)


def load_split(folder: Path) -> SplitArrays:
    """Open a split written by :func:`write_split`; images are memory-mapped, read-only."""
    try:
        meta = read_json(folder / "meta.json")
        return SplitArrays(
            images=np.load(folder / "images.npy", mmap_mode="r"),
            labels=np.load(folder / "labels.npy"),
            classes=list(meta["classes"]),
            files=list(meta["files"]),
        )
    except FileNotFoundError as exc:
        raise ImgpipeError(f"{folder}: not a preprocessed split ({exc.filename} missing)") from None


def data_report(
    classes: list[str],
    splits: dict[str, list[Sample]],
    skipped: dict[str, list[dict[str, str]]],
) -> dict[str, Any]:
    """Counts per class and split (after skipping), and every skipped file with its reason."""
    skipped_files = {entry["file"] for entries in skipped.values() for entry in entries}
    counts: dict[str, dict[str, int]] = {}
    for split, samples in splits.items():
        kept = Counter(s.label for s in samples if s.path.as_posix() not in skipped_files)
        counts[split] = {name: kept.get(i, 0) for i, name in enumerate(classes)}
    empty = sorted(name for name in classes if not any(c[name] for c in counts.values()))
    return {
        "classes": classes,
        "counts": counts,
        "totals": {split: sum(c.values()) for split, c in counts.items()},
        "empty_classes": empty,
        "skipped": sorted(
            ({"split": split, **entry} for split, entries in skipped.items() for entry in entries),
            key=lambda entry: entry["file"],
        ),
        "skipped_count": len(skipped_files),
    }
