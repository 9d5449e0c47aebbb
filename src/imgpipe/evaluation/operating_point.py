"""The operating point of a screening model: the threshold on the positive class's calibrated
probability that meets a target sensitivity (or specificity) on the validation split, chosen
there and applied unchanged to the test split and in production.

For two classes this is the usual screening threshold; with more, the positive class is scored
one against the rest.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from imgpipe.errors import ImgpipeError

Target = Literal["sensitivity", "specificity"]


@dataclass(frozen=True)
class OperatingPointChoice:
    """The chosen threshold (None when the validation split cannot support the target) and
    what it achieved on the validation split."""

    positive_class: str
    target: Target
    target_value: float
    threshold: float | None
    val_positives: int
    val_negatives: int
    val_sensitivity: float | None = None
    val_specificity: float | None = None
    note: str | None = None  # why there is no threshold

    def to_dict(self) -> dict[str, Any]:
        """Flat keys for metrics/calibration.json (the note named for what it explains)."""
        values = asdict(self)
        values["operating_point_note"] = values.pop("note")
        return values


def images_needed(target_value: float) -> int:
    """Below ``1 / (1 - target)`` positives (negatives for a specificity target), one image
    moves the rate by more than the margin the target leaves, so the target cannot be told
    apart from luck."""
    return math.ceil(1 / (1 - target_value) - 1e-9)


def choose_operating_point(
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    positive_class: str,
    *,
    target: Target,
    target_value: float,
) -> OperatingPointChoice:
    """The highest threshold whose sensitivity reaches ``target_value`` (for a sensitivity
    target: the most specific such point), or the lowest whose specificity does (for a
    specificity target: the most sensitive such point). An image is called positive when its
    probability of ``positive_class`` is at least the threshold."""
    if positive_class not in classes:
        raise ImgpipeError(
            f"evaluate.positive_class '{positive_class}' is not a class of this data "
            f"(classes: {', '.join(classes)})"
        )
    positive = classes.index(positive_class)
    score = probabilities[:, positive]
    is_positive = labels == positive
    positives, negatives = int(is_positive.sum()), int((~is_positive).sum())
    pool = positives if target == "sensitivity" else negatives
    needed = images_needed(target_value)
    if pool < needed:
        side = "positives" if target == "sensitivity" else "negatives"
        note = (
            f"the validation split has {pool} {side} of '{positive_class}'; a {target} of "
            f"{target_value:g} needs at least {needed} to be told apart from chance: no "
            "threshold chosen (more validation data, or a lower target)"
        )
        return OperatingPointChoice(
            positive_class, target, target_value, None, positives, negatives, note=note
        )
    if target == "sensitivity":
        descending = np.sort(score[is_positive])[::-1]
        threshold = float(descending[math.ceil(target_value * pool - 1e-9) - 1])
    else:
        ascending = np.sort(score[~is_positive])
        threshold = float(np.nextafter(ascending[math.ceil(target_value * pool - 1e-9) - 1], 2.0))
    called = score >= threshold
    return OperatingPointChoice(
        positive_class,
        target,
        target_value,
        threshold,
        positives,
        negatives,
        val_sensitivity=_rate(called[is_positive]),
        val_specificity=_rate(~called[~is_positive]),
    )


def _rate(hits: np.ndarray) -> float | None:
    return round(float(hits.mean()), 6) if len(hits) else None
