"""The ``evaluate`` stage's plots folder: the data of each DVC plot as CSV (per-class scores,
confusion, reliability, ROC and precision-recall curves, the misclassified images) and the two
pictures of the mistakes (:mod:`imgpipe.evaluation.pictures`)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np

from imgpipe.data.splits import SplitArrays
from imgpipe.evaluation.bootstrap import OperatingPoint
from imgpipe.evaluation.calibration import calibration
from imgpipe.evaluation.metrics import (
    confusion_rows,
    misclassified_rows,
    one_vs_rest_curves,
)
from imgpipe.evaluation.pictures import gradcam_grid, misclassified_grid
from imgpipe.io import atomic_path
from imgpipe.training.model import Classifier

log = logging.getLogger(__name__)


def write_plots(
    folder: Path,
    model: Classifier,
    test: SplitArrays,
    probabilities: np.ndarray,
    per_class: list[dict[str, Any]],
    *,
    uncalibrated: np.ndarray,
    point: OperatingPoint | None = None,
) -> None:
    """Write every file of the plots folder, each atomically.

    Args:
        folder: the plots folder dvc.yaml declares.
        model: the trained model, on the CPU (Grad-CAM runs it forwards and backwards).
        test: the split ``probabilities`` were computed on.
        probabilities: one row of calibrated class probabilities per test image.
        per_class: the per-class rows :func:`~imgpipe.evaluation.metrics.score_split` returned.
        uncalibrated: the same before temperature scaling (the reliability diagram shows both).
        point: the operating point, marked on the ROC plot.
    """
    predicted = probabilities.argmax(1)
    _, roc, precision_recall = one_vs_rest_curves(test.labels, probabilities, test.classes)
    write_csv(folder / "per_class.csv", per_class, list(per_class[0]))
    write_csv(
        folder / "confusion.csv",
        confusion_rows(test.labels, predicted, test.classes),
        ["actual", "predicted"],
    )
    write_csv(
        folder / "calibration.csv",
        reliability_rows(test.labels, probabilities, uncalibrated),
        ["probabilities", "confidence", "accuracy", "images"],
    )
    if point is not None:
        roc += operating_point_marker(test.labels, probabilities, test.classes, point)
    write_csv(folder / "roc.csv", roc, ["class", "fpr", "tpr"])
    write_csv(folder / "precision_recall.csv", precision_recall, ["class", "recall", "precision"])
    write_csv(folder / "predictions.csv", *prediction_table(test, probabilities))
    wrong = misclassified_rows(test.labels, probabilities, test.classes, test.files)
    write_csv(folder / "misclassified.csv", wrong, ["file", "actual", "predicted", "confidence"])
    grid = misclassified_grid(test.images, test.labels, probabilities, test.classes)
    write_png(folder / "misclassified.png", grid)
    log.info("%d misclassified", len(wrong))
    grid = gradcam_grid(model, test.images, test.labels, probabilities, test.classes)
    write_png(folder / "gradcam.png", grid)


def reliability_rows(
    labels: np.ndarray, calibrated: np.ndarray, uncalibrated: np.ndarray
) -> list[dict[str, Any]]:
    """The reliability diagram's bins, once for the calibrated probabilities and once for the
    raw softmax, told apart by the ``probabilities`` column."""
    rows: list[dict[str, Any]] = []
    for name, values in (("calibrated", calibrated), ("uncalibrated", uncalibrated)):
        rows += [{"probabilities": name} | row for row in calibration(labels, values)[1]]
    return rows


def operating_point_marker(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str], point: OperatingPoint
) -> list[dict[str, Any]]:
    """Three ROC rows that draw the operating point as drop lines to both axes: a line of its
    own in the one-vs-rest plot, named with the class and threshold."""
    called = probabilities[:, point.positive] >= point.threshold
    positive = labels == point.positive
    tpr = float(called[positive].mean()) if positive.any() else 0.0
    fpr = float(called[~positive].mean()) if (~positive).any() else 0.0
    name = f"operating point ({classes[point.positive]} >= {point.threshold:.3g})"
    return [
        {"class": name, "fpr": 0.0, "tpr": round(tpr, 6)},
        {"class": name, "fpr": round(fpr, 6), "tpr": round(tpr, 6)},
        {"class": name, "fpr": round(fpr, 6), "tpr": 0.0},
    ]


def prediction_table(
    test: SplitArrays, probabilities: np.ndarray
) -> tuple[list[dict[str, Any]], list[str]]:
    """Each test image's calibrated probabilities and label, keyed by its file in the split (no
    pixels): what the PR report pairs the base revision's model against this one's with."""
    columns = ["file", "group", "label", *(f"p:{name}" for name in test.classes)]
    groups = test.groups or [""] * len(test)
    rows = [
        dict(
            zip(
                columns,
                [file, group, test.classes[int(label)], *(f"{p:.6f}" for p in row)],
                strict=True,
            )
        )
        for file, group, label, row in zip(
            test.files, groups, test.labels, probabilities, strict=True
        )
    ]
    return rows, columns


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """``rows`` under a header of ``columns``, in that order."""
    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_png(path: Path, picture: Any) -> None:
    """A PIL image as PNG."""
    with atomic_path(path) as temporary:
        picture.save(temporary, format="PNG")
