"""Folds: stratified, groups kept whole, the same for a seed, too many refused."""

from __future__ import annotations

import numpy as np
import pytest

from imgpipe.audit.folds import assign_folds
from imgpipe.errors import ImgpipeError


def test_a_patients_images_share_a_fold() -> None:
    rng = np.random.default_rng(0)
    groups = [f"p{i // 3}" for i in range(90)]  # 30 patients, 3 images each
    labels = np.array([int(g[1:]) % 2 for g in groups])
    fold = assign_folds(labels, groups, folds=5, seed=0)
    for patient in set(groups):
        assert len({fold[i] for i, g in enumerate(groups) if g == patient}) == 1
    assert set(fold) == set(range(5))
    shuffled = rng.permutation(90)  # not an artefact of the patients being in order
    refold = assign_folds(labels[shuffled], [groups[i] for i in shuffled], folds=5, seed=0)
    for patient in set(groups):
        assert len({refold[j] for j, i in enumerate(shuffled) if groups[i] == patient}) == 1


def test_folds_are_stratified_and_fixed_by_the_seed() -> None:
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    fold = assign_folds(labels, None, folds=5, seed=3)
    for index in range(5):
        assert np.bincount(labels[fold == index], minlength=3).tolist() == [10, 6, 4]
    assert np.array_equal(fold, assign_folds(labels, None, folds=5, seed=3))
    assert not np.array_equal(fold, assign_folds(labels, None, folds=5, seed=4))


def test_more_folds_than_patients_is_named() -> None:
    with pytest.raises(ImgpipeError, match=r"audit.folds \(5\) is more than the 3 patients"):
        assign_folds(np.array([0, 0, 1, 1, 0, 1]), ["a", "a", "b", "b", "c", "c"], 5, 0)
