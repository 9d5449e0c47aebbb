"""The ``preprocess`` stage's library: ImageFolder tree -> split, decoded, resized uint8 arrays,
and the data report.

Each split is written in the format of :mod:`imgpipe.data.splits`, each row of ``images.npy``
written to its offset by the decoding worker, so memory stays flat.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from imgpipe.data.grouping import group_id, group_report, grouped_split
from imgpipe.data.images import ImageDecodeError, decode_image
from imgpipe.data.layout import has_junk_part, is_junk, split_folders
from imgpipe.data.near_duplicates import LISTED_PAIRS, Place, near_duplicate_pairs, perceptual_hash
from imgpipe.data.split_writer import compact_rows, create_image_array, write_labels_and_meta
from imgpipe.data.splits import IMAGES_FILE
from imgpipe.errors import ImgpipeError
from imgpipe.io import atomic_path

log = logging.getLogger(__name__)


class PreprocessError(ImgpipeError):
    """The raw data cannot be turned into train/val/test splits."""


@dataclass(frozen=True)
class Sample:
    path: Path  # relative to the raw root, for reports (a frame: <clip path>/frame_<index>.png)
    label: int
    group_found: str | None = None  # what preprocess.group_pattern captured; None: no match
    clip: str | None = None  # a video frame: its clip's path relative to the raw root
    file: Path | None = None  # where the pixels are when not at <raw root>/<path> (frames)

    @property
    def group(self) -> str:
        """The group the image is split with: the pattern's capture, else its clip, else the
        image alone."""
        if self.group_found is not None:
            return self.group_found
        return self.clip if self.clip is not None else self.path.as_posix()

    def source(self, raw_root: Path) -> Path:
        return self.file if self.file is not None else raw_root / self.path


def list_samples(
    root: Path, group_pattern: str | None = None
) -> tuple[list[str], dict[str | None, list[Sample]]]:
    """Class names (sorted folder names) and the samples of each pre-made split, each with the
    group ``group_pattern`` finds in its path below its class folder (see
    :mod:`imgpipe.data.grouping`).

    Returns:
        ``(classes, samples)`` where ``samples`` maps ``"train"``/``"val"``/``"test"`` to their
        samples for a pre-split tree, or ``None`` to all samples for an unsplit one. Files in
        nested folders under a class belong to that class.
    """
    pattern = re.compile(group_pattern) if group_pattern else None
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
            Sample(
                path.relative_to(root),
                index[class_dir.name],
                group_id(path.relative_to(class_dir).as_posix(), pattern),
            )
            for class_dir in sorted(split_root.iterdir())
            if class_dir.is_dir() and not is_junk(class_dir.name)
            for path in sorted(class_dir.rglob("*"))
            if path.is_file() and not has_junk_part(path, root)
        ]
    return classes, samples


def assign_splits(
    samples: dict[str | None, list[Sample]],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    *,
    grouped: bool = False,
) -> dict[str, list[Sample]]:
    """Keep a source's own splits; split the rest stratified by class with ``seed`` (whole
    groups at a time when ``grouped``).

    A pre-split source without a validation split gets one carved from its training split.
    """
    carve = _grouped if grouped else _stratified
    if None in samples:
        rest, test = carve(samples[None], test_fraction, seed, "test")
        train, val = carve(rest, val_fraction / (1 - test_fraction), seed, "val")
        return {"train": train, "val": val, "test": test}
    train = samples.get("train", [])
    val = samples.get("val") or []
    if not val:
        train, val = carve(train, val_fraction, seed, "val")
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


def _grouped(
    samples: list[Sample], fraction: float, seed: int, name: str
) -> tuple[list[Sample], list[Sample]]:
    try:
        kept, taken = grouped_split(samples, fraction, seed, name)
    except ImgpipeError as error:
        raise PreprocessError(str(error)) from None
    return sorted(kept, key=_order), sorted(taken, key=_order)


def _order(sample: Sample) -> tuple[int, str]:
    return sample.label, sample.path.as_posix()


@dataclass
class SplitOutcome:
    """What writing one split found: the files skipped (with reasons), and a content digest and
    a perceptual hash of every image kept, for finding the same image, or a near copy, in two
    classes or splits."""

    skipped: list[dict[str, str]] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # file -> digest of decoded pixels
    hashes: dict[str, str] = field(default_factory=dict)  # file -> perceptual hash (hex)


def worker_count(requested: int) -> int:
    """``0`` means every core this process may use."""
    return requested or len(os.sched_getaffinity(0))


def write_split(
    raw_root: Path,
    samples: list[Sample],
    classes: list[str],
    destination: Path,
    *,
    image_size: int,
    channels: int,
    workers: int = 1,
) -> SplitOutcome:
    """Decode, resize and write one split, decoding on ``workers`` processes.

    Each worker writes the rows it decodes straight into ``images.npy`` at their offsets, so
    only a digest or a skip reason crosses between processes, and no process maps or holds
    the array: memory stays flat whatever the dataset's size.
    """
    outcome = SplitOutcome()
    row_shape = (image_size, image_size, channels)
    with atomic_path(destination) as temporary:
        temporary.mkdir()
        array = temporary / IMAGES_FILE
        header = create_image_array(array, (len(samples), *row_shape))
        row_bytes = int(np.prod(row_shape))
        jobs = [
            (s.source(raw_root), image_size, channels, array, header + i * row_bytes)
            for i, s in enumerate(samples)
        ]
        kept_rows: list[int] = []
        labels: list[int] = []
        files: list[str] = []
        with _decoder(workers) as decode_all:
            results = tqdm(
                decode_all(_decode_job, jobs),
                total=len(jobs),
                desc=f"preprocess {destination.name}",
                unit="img",
            )
            for row, (sample, (written, detail, hashed)) in enumerate(
                zip(samples, results, strict=True)
            ):
                file = sample.path.as_posix()
                if not written:
                    outcome.skipped.append({"file": file, "reason": detail})
                    continue
                kept_rows.append(row)
                labels.append(sample.label)
                files.append(file)
                outcome.digests[file] = detail
                outcome.hashes[file] = hashed
        if outcome.skipped:
            compact_rows(array, header, row_bytes, kept_rows, row_shape)
        write_labels_and_meta(temporary, labels, classes, files)
    return outcome


_Job = tuple[Path, int, int, Path, int]
_Result = tuple[bool, str, str]


def _decode_job(job: _Job) -> _Result:
    """Decode one image and write it at its offset: ``(True, digest, perceptual hash)`` or
    ``(False, reason, "")``."""
    path, size, channels, array, offset = job
    try:
        pixels = decode_image(path, size, channels)
    except ImageDecodeError as reason:
        return False, str(reason), ""
    except OSError as error:  # unreadable: permissions, vanished, a folder named like a file
        return False, f"cannot read: {error.strerror or error}", ""
    data = pixels.tobytes()
    with array.open("r+b") as handle:
        handle.seek(offset)
        handle.write(data)
    return True, hashlib.blake2b(data, digest_size=16).hexdigest(), perceptual_hash(pixels)


@contextmanager
def _decoder(
    workers: int,
) -> Iterator[Callable[[Callable[[_Job], _Result], list[_Job]], Iterable[_Result]]]:
    """``map`` in this process for one worker, else an ordered, lazy ``imap`` over a pool."""
    if workers <= 1:
        yield map
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield lambda function, jobs: pool.imap(function, jobs, chunksize=32)


def find_leaks(
    outcomes: dict[str, SplitOutcome], samples: dict[str, list[Sample]], classes: list[str]
) -> list[dict[str, Any]]:
    """Groups of identical images (same decoded pixels) that sit in more than one class or split.

    Such duplicates leak test answers into training or teach contradictory labels.
    """
    label_of = {s.path.as_posix(): classes[s.label] for split in samples.values() for s in split}
    where: dict[str, list[dict[str, str]]] = {}
    for split, outcome in outcomes.items():
        for file, digest in outcome.digests.items():
            where.setdefault(digest, []).append(
                {"split": split, "class": label_of[file], "file": file}
            )
    leaks = []
    for copies in where.values():
        kinds = []
        if len({c["class"] for c in copies}) > 1:
            kinds.append("classes")
        if len({c["split"] for c in copies}) > 1:
            kinds.append("splits")
        if kinds:
            leaks.append({"across": kinds, "copies": sorted(copies, key=lambda c: c["file"])})
    return sorted(leaks, key=lambda leak: leak["copies"][0]["file"])


def find_near_duplicates(
    outcomes: dict[str, SplitOutcome],
    samples: dict[str, list[Sample]],
    classes: list[str],
    max_distance: int,
) -> tuple[int, list[dict[str, Any]]]:
    """How many near-duplicate pairs sit in different classes or splits (perceptual hashes
    within ``max_distance`` bits, pixel-identical pairs left to :func:`find_leaks`), and the
    closest :data:`LISTED_PAIRS` of them."""
    label_of = {s.path.as_posix(): s.label for split in samples.values() for s in split}
    files, hashes, places = [], [], []
    for split, outcome in outcomes.items():
        for file, hashed in outcome.hashes.items():
            files.append((split, file))
            hashes.append(hashed)
            places.append(Place(split, label_of[file], outcome.digests[file]))
    pairs = near_duplicate_pairs(hashes, places, max_distance)

    def where(i: int) -> dict[str, str]:
        split, file = files[i]
        return {"split": split, "class": classes[places[i].label], "file": file}

    listed = [
        {"distance": distance, "copies": sorted((where(i), where(j)), key=lambda c: c["file"])}
        for i, j, distance in pairs[:LISTED_PAIRS]
    ]
    return len(pairs), listed


def data_report(
    classes: list[str],
    splits: dict[str, list[Sample]],
    outcomes: dict[str, SplitOutcome],
    *,
    grouped: bool = False,
    patterned: bool = False,
    near_duplicate_distance: int | None = None,
    video: dict[str, int] | None = None,
    skipped_clips: list[dict[str, Any]] | None = None,
    source_notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Counts per class and split (after skipping), the share of images in each split, every
    skipped file with its reason, empty classes, identical images found in more than one class
    or split, near-duplicates there (``near_duplicate_distance``: None skips the search), the
    clips and frames found (``video``; ``skipped_clips`` join the skipped files), what
    download noted about the source (``source_notes``: links pointing outside it), and
    (``grouped``) the groups per split and class, groups found in several classes or splits,
    and (``patterned``) the paths the group pattern did not match."""
    counts: dict[str, dict[str, int]] = {}
    for split, samples in splits.items():
        kept = set(outcomes[split].digests)
        per_class = Counter(s.label for s in samples if s.path.as_posix() in kept)
        counts[split] = {name: per_class.get(i, 0) for i, name in enumerate(classes)}
    empty = sorted(name for name in classes if not any(c[name] for c in counts.values()))
    skipped = [
        {"split": split, **entry}
        for split, outcome in outcomes.items()
        for entry in outcome.skipped
    ] + list(skipped_clips or [])
    leaks = find_leaks(outcomes, splits, classes)
    totals = {split: sum(c.values()) for split, c in counts.items()}
    report: dict[str, Any] = {
        "classes": classes,
        "counts": counts,
        "totals": totals,
        "split_fractions": {
            split: round(total / max(1, sum(totals.values())), 4) for split, total in totals.items()
        },
        "empty_classes": empty,
        "skipped": sorted(skipped, key=lambda entry: entry["file"]),
        "skipped_count": len(skipped),
        "duplicates_across_classes_or_splits": leaks,
        "duplicate_groups": len(leaks),
    }
    if video is not None:
        report["video"] = video
    report |= source_notes or {}
    if near_duplicate_distance is not None:
        count, listed = find_near_duplicates(outcomes, splits, classes, near_duplicate_distance)
        report["near_duplicates"] = {
            "max_distance_bits": near_duplicate_distance,
            "pairs_count": count,
            "pairs": listed,
        }
    if grouped:
        unmatched = sorted(
            {
                s.clip or s.path.as_posix()
                for part in splits.values()
                for s in part
                if patterned and s.group_found is None
            }
        )
        report["groups"] = group_report(splits, classes, unmatched)
    return report
