"""Writing the preprocessed splits: each image decoded, resized and written as uint8 rows.

Each split is written in the format of :mod:`imgpipe.data.splits`, each row of ``images.npy``
written to its offset by the decoding worker, so memory stays flat. The other steps of the
preprocess stage: :mod:`~imgpipe.data.samples` (listing the raw tree),
:mod:`~imgpipe.data.clips` (video frames), :mod:`~imgpipe.data.splitting` (assigning splits)
and :mod:`~imgpipe.data.data_report`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from imgpipe.data.images import ImageDecodeError, decode_image
from imgpipe.data.near_duplicates import perceptual_hash
from imgpipe.data.samples import Sample
from imgpipe.data.split_writer import compact_rows, create_image_array, write_labels_and_meta
from imgpipe.data.splits import IMAGES_FILE, SPLITS
from imgpipe.data.workers import fork_map
from imgpipe.io import atomic_path


@dataclass
class SplitOutcome:
    """What writing one split found: the files skipped (with reasons), and a content digest and
    a perceptual hash of every image kept, for finding the same image, or a near copy, in two
    classes or splits."""

    skipped: list[dict[str, str]] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # file -> digest of decoded pixels
    hashes: dict[str, str] = field(default_factory=dict)  # file -> perceptual hash (hex)


def write_splits(
    raw_root: Path,
    splits: dict[str, list[Sample]],
    classes: list[str],
    out: Path,
    *,
    image_size: int,
    channels: int,
    workers: int = 1,
    grouped: bool = False,
) -> dict[str, SplitOutcome]:
    """Every split written to ``out/<split>`` (:func:`write_split`), train, val, then test."""
    return {
        split: write_split(
            raw_root,
            splits[split],
            classes,
            out / split,
            image_size=image_size,
            channels=channels,
            workers=workers,
            grouped=grouped,
        )
        for split in SPLITS
    }


def write_split(
    raw_root: Path,
    samples: list[Sample],
    classes: list[str],
    destination: Path,
    *,
    image_size: int,
    channels: int,
    workers: int = 1,
    grouped: bool = False,
) -> SplitOutcome:
    """Decode, resize and write one split, decoding on ``workers`` processes; with ``grouped``,
    the meta file lists each image's group (patient, clip).

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
        groups: list[str] = []
        results = tqdm(
            fork_map(_decode_job, jobs, workers, chunksize=32),
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
            groups.append(sample.group)
            outcome.digests[file] = detail
            outcome.hashes[file] = hashed
        if outcome.skipped:
            compact_rows(array, header, row_bytes, kept_rows, row_shape)
        write_labels_and_meta(temporary, labels, classes, files, groups if grouped else None)
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
