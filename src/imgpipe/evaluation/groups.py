"""Patient- and clip-level results: when the test split was made by groups, each group is
scored once, from the mean calibrated probability over its images, so that a patient with six
images weighs what a patient with one does."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GroupScores:
    labels: np.ndarray  # one label per group whose images share one class
    probabilities: np.ndarray  # the mean probabilities over each such group's images
    names: list[str]
    spanning_classes: int  # groups left out: their images carry more than one label


def group_scores(labels: np.ndarray, probabilities: np.ndarray, groups: list[str]) -> GroupScores:
    """One row per group (in order of first appearance); groups whose images disagree on the
    label have no single truth to score against and are only counted."""
    names, first, inverse = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # first appearance, not alphabetical
    sizes = np.bincount(inverse, minlength=len(names)).astype(np.float64)
    sums = np.zeros((len(names), probabilities.shape[1]))
    np.add.at(sums, inverse, probabilities)
    lowest = np.full(len(names), np.iinfo(np.int64).max)
    highest = np.full(len(names), np.iinfo(np.int64).min)
    np.minimum.at(lowest, inverse, labels)
    np.maximum.at(highest, inverse, labels)
    single = (lowest == highest)[order]
    kept = order[single]
    return GroupScores(
        labels=lowest[kept],
        probabilities=sums[kept] / sizes[kept, None],
        names=[str(n) for n in names[kept]],
        spanning_classes=int((~single).sum()),
    )
