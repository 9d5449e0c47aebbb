"""Group-aware splitting: images of one patient, eye pair or video clip share a group, and a
group never straddles train, val and test (a random per-image split would let the test score
measure memory of the patient, not skill).

The group of an image is the first capture group of ``preprocess.group_pattern``, searched in
its path relative to its class folder (``(\\d+)_`` finds ``123`` in ``123_left.png`` and in
``batch2/123_right.png``; ``^([^/]+)/`` makes every sub-folder a group). A path the pattern does
not match is its own group and is reported. Splits are stratified by class as far as the
groups allow (scikit-learn's ``StratifiedGroupKFold``) and reproducible for ``split_seed``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from imgpipe.errors import ImgpipeError

LISTED = 20  # at most this many examples of each finding go into the (committed) report


class Grouped(Protocol):
    @property
    def label(self) -> int: ...
    @property
    def group(self) -> str: ...


T = TypeVar("T", bound="Grouped")


def group_id(relative_to_class: str, pattern: re.Pattern[str] | None) -> str | None:
    """The group ``pattern`` finds in a path (POSIX, relative to its class folder); None when
    it finds none (the image is then a group of its own)."""
    if pattern is None:
        return None
    found = pattern.search(relative_to_class)
    return found.group(1) if found else None


def grouped_split(
    samples: Sequence[T], fraction: float, seed: int, name: str
) -> tuple[list[T], list[T]]:
    """About ``fraction`` of the samples, whole groups only, stratified by class as far as the
    groups allow: ``(kept, taken)``."""
    folds = max(2, round(1 / fraction))
    groups = [s.group for s in samples]
    if len(set(groups)) < folds:
        raise ImgpipeError(
            f"cannot carve a {name} split of {fraction:.0%} from {len(set(groups))} groups "
            f"(preprocess.group_pattern): at least {folds} groups are needed"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    labels = np.array([s.label for s in samples])
    kept, taken = next(splitter.split(np.zeros(len(samples)), labels, groups))
    return [samples[i] for i in kept], [samples[i] for i in taken]


def group_report(
    splits: Mapping[str, Sequence[Grouped]], classes: list[str], unmatched: list[str]
) -> dict[str, Any]:
    """Groups per split and per class, groups found in more than one class or split, and the
    paths the pattern did not match (counts, and the first few of each)."""
    per_split = {split: len({s.group for s in samples}) for split, samples in splits.items()}
    per_class = {
        split: {
            name: len({s.group for s in samples if s.label == index})
            for index, name in enumerate(classes)
        }
        for split, samples in splits.items()
    }
    classes_of: dict[str, set[str]] = defaultdict(set)
    splits_of: dict[str, set[str]] = defaultdict(set)
    for split, samples in splits.items():
        for s in samples:
            classes_of[s.group].add(classes[s.label])
            splits_of[s.group].add(split)
    spanning = sorted(g for g, found in classes_of.items() if len(found) > 1)
    straddling = sorted(g for g, found in splits_of.items() if len(found) > 1)
    return {
        "per_split": per_split,
        "per_class": per_class,
        "spanning_classes_count": len(spanning),
        "spanning_classes": [
            {"group": g, "classes": sorted(classes_of[g])} for g in spanning[:LISTED]
        ],
        "in_several_splits_count": len(straddling),
        "in_several_splits": [
            {"group": g, "splits": sorted(splits_of[g])} for g in straddling[:LISTED]
        ],
        "unmatched_count": len(unmatched),
        "unmatched": sorted(unmatched)[:LISTED],
    }
