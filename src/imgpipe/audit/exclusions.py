"""``audit.exclude``: the training images the audit flagged as likely mislabelled, which train
then leaves out. The audit always writes the list (empty while ``audit.exclude`` is off), so
train depends on one small file whose content changes only when what it drops does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from imgpipe.data.splits import SplitArrays
from imgpipe.errors import ImgpipeError
from imgpipe.io import read_json, write_json


def training_exclusions(suspects: pd.DataFrame, exclude: bool) -> list[str]:
    """The training images to drop: label suspects of the train split. Outliers are not
    dropped (a rare case looks like an outlier too), nor anything of val or test (those are
    for a person to review: dropping them would flatter the score)."""
    if not exclude:
        return []
    flagged = suspects[(suspects["split"] == "train") & suspects["issue"].str.contains("label")]
    return sorted(flagged["file"])


def write_exclusions(path: Path, files: list[str], exclude: bool) -> None:
    write_json(path, {"exclude": exclude, "files": files})


def read_exclusions(path: Path) -> list[str]:
    """The files listed by :func:`write_exclusions`.

    Raises:
        ImgpipeError: the file is missing or not such a list.
    """
    try:
        data = read_json(path)
        files = data["files"]
    except FileNotFoundError:
        raise ImgpipeError(f"{path}: not found; run the audit stage (dvc repro audit)") from None
    except (ValueError, KeyError, TypeError):
        raise ImgpipeError(f"{path}: not the audit's exclusion list (no 'files' list)") from None
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        raise ImgpipeError(f"{path}: 'files' must be a list of file names")
    return files


def drop_files(split: SplitArrays, files: list[str]) -> SplitArrays:
    """``split`` without the rows whose file is in ``files`` (the others in order).

    Raises:
        ImgpipeError: a listed file is not in the split (the list is from another dataset).
    """
    if not files:
        return split
    dropped = set(files)
    unknown = dropped.difference(split.files)
    if unknown:
        raise ImgpipeError(
            f"audit exclusions name {len(unknown)} file(s) the train split does not have "
            f"(e.g. {sorted(unknown)[0]}); rerun the audit stage"
        )
    keep = np.array([name not in dropped for name in split.files])
    return subset(split, np.flatnonzero(keep))


def subset(split: SplitArrays, rows: np.ndarray) -> SplitArrays:
    """``rows`` of ``split``, in that order, with their files and groups (images copied out
    of the memory map)."""
    return SplitArrays(
        images=np.ascontiguousarray(split.images[rows]),
        labels=split.labels[rows],
        classes=split.classes,
        files=[split.files[i] for i in rows] if split.files else [],
        groups=[split.groups[i] for i in rows] if split.groups is not None else None,
    )
