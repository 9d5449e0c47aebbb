"""Which fold each image of the audit falls in: stratified by class, and by group when the split
has patients or clips, so that no image is scored by a model trained on another image of the same
patient (its twin would vouch for its label)."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from imgpipe.errors import ImgpipeError


def assign_folds(labels: np.ndarray, groups: list[str] | None, folds: int, seed: int) -> np.ndarray:
    """The fold (``0 .. folds-1``) of every row; rows of one group always share a fold.

    Raises:
        ImgpipeError: fewer images (or groups) than folds.
    """
    units = len(set(groups)) if groups is not None else len(labels)
    if units < folds:
        what = "patients/clips" if groups is not None else "images"
        raise ImgpipeError(f"audit.folds ({folds}) is more than the {units} {what} to audit")
    fold = np.empty(len(labels), dtype=np.int64)
    rows = np.zeros(len(labels))
    if groups is None:
        split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(rows, labels)
    else:
        grouped = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        split = grouped.split(rows, labels, groups)
    for index, (_, held_out) in enumerate(split):
        fold[held_out] = index
    return fold
