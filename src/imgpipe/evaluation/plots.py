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
from imgpipe.evaluation.metrics import (
    calibration,
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
) -> None:
    """Write every file of the plots folder, each atomically.

    Args:
        folder: the plots folder dvc.yaml declares.
        model: the trained model, on the CPU (Grad-CAM runs it forwards and backwards).
        test: the split ``probabilities`` were computed on.
        probabilities: one row of class probabilities per test image.
        per_class: the per-class rows :func:`~imgpipe.evaluation.metrics.score_split` returned.
    """
    predicted = probabilities.argmax(1)
    _, reliability = calibration(test.labels, probabilities)
    _, roc, precision_recall = one_vs_rest_curves(test.labels, probabilities, test.classes)
    write_csv(folder / "per_class.csv", per_class, list(per_class[0]))
    write_csv(
        folder / "confusion.csv",
        confusion_rows(test.labels, predicted, test.classes),
        ["actual", "predicted"],
    )
    write_csv(folder / "calibration.csv", reliability, ["confidence", "accuracy", "images"])
    write_csv(folder / "roc.csv", roc, ["class", "fpr", "tpr"])
    write_csv(folder / "precision_recall.csv", precision_recall, ["class", "recall", "precision"])
    wrong = misclassified_rows(test.labels, probabilities, test.classes, test.files)
    write_csv(folder / "misclassified.csv", wrong, ["file", "actual", "predicted", "confidence"])
    grid = misclassified_grid(test.images, test.labels, probabilities, test.classes)
    write_png(folder / "misclassified.png", grid)
    log.info("%d misclassified", len(wrong))
    grid = gradcam_grid(model, test.images, test.labels, probabilities, test.classes)
    write_png(folder / "gradcam.png", grid)


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
