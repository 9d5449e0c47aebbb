"""The ``evaluate`` stage's library: metrics of a trained model on the test split."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support


def classification_metrics(
    labels: np.ndarray, predicted: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Accuracy, macro/weighted F1 and per-class precision, recall, F1 and support."""
    indices = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=indices, zero_division=0
    )
    return {
        "accuracy": round(float(accuracy_score(labels, predicted)), 6),
        "macro_f1": round(
            float(f1_score(labels, predicted, labels=indices, average="macro", zero_division=0)), 6
        ),
        "weighted_f1": round(
            float(f1_score(labels, predicted, labels=indices, average="weighted", zero_division=0)),
            6,
        ),
        "test_images": len(labels),
        "per_class": {
            name: {
                "precision": round(float(precision[i]), 6),
                "recall": round(float(recall[i]), 6),
                "f1": round(float(f1[i]), 6),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
    }


def confusion_rows(
    labels: np.ndarray, predicted: np.ndarray, classes: list[str]
) -> list[dict[str, str]]:
    """One ``{actual, predicted}`` row per image: the input DVC's confusion template wants."""
    return [
        {"actual": classes[int(a)], "predicted": classes[int(p)]}
        for a, p in zip(labels, predicted, strict=True)
    ]


def misclassified_rows(
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    files: list[str],
) -> list[dict[str, Any]]:
    """The wrongly classified test images, most confidently wrong first."""
    predicted = probabilities.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    rows = [
        {
            "file": files[i],
            "actual": classes[int(labels[i])],
            "predicted": classes[int(predicted[i])],
            "confidence": round(float(probabilities[i, predicted[i]]), 6),
        }
        for i in wrong
    ]
    return sorted(rows, key=lambda row: (-row["confidence"], row["file"]))


def calibration(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = 15
) -> tuple[float, list[dict[str, float]]]:
    """Expected calibration error of the top-1 confidence, and the reliability-diagram rows.

    ECE = sum over equal-width confidence bins of (share of images in the bin) x |accuracy -
    mean confidence| (Guo et al. 2017); empty bins contribute nothing and get no row.
    """
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == labels
    # Bin i holds (i/bins, (i+1)/bins]; a confidence of exactly 0 joins the first bin.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    error, rows = 0.0, []
    for b in range(bins):
        members = index == b
        if not members.any():
            continue
        accuracy, mean_confidence = (
            float(correct[members].mean()),
            float(confidence[members].mean()),
        )
        error += members.mean() * abs(accuracy - mean_confidence)
        rows.append({
            "confidence": round(mean_confidence, 6),
            "accuracy": round(accuracy, 6),
            "images": int(members.sum()),
        })  # fmt: skip
    return round(float(error), 6), rows


def one_vs_rest_curves(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str]
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Per class (that class against all others): ROC AUC and average precision, the ROC curve
    rows and the precision-recall curve rows, for DVC plots coloured by class.

    PR curves are given at the 101 recall points 0, 0.01, ..., 1 with interpolated precision
    (the best precision at that recall or above, as in COCO), which keeps the file small.
    """
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        roc_auc_score,
        roc_curve,
    )

    scores: dict[str, dict[str, float]] = {}
    roc_rows: list[dict[str, Any]] = []
    pr_rows: list[dict[str, Any]] = []
    grid = np.linspace(0, 1, 101)
    for index, name in enumerate(classes):
        positive = labels == index
        if positive.all() or not positive.any():  # AUC undefined with one class present
            continue
        score = probabilities[:, index]
        scores[name] = {
            "roc_auc": round(float(roc_auc_score(positive, score)), 6),
            "average_precision": round(float(average_precision_score(positive, score)), 6),
        }
        fpr, tpr, _ = roc_curve(positive, score, drop_intermediate=True)
        roc_rows += [
            {"class": name, "fpr": round(float(f), 6), "tpr": round(float(t), 6)}
            for f, t in zip(fpr, tpr, strict=True)
        ]
        precision, recall, _ = precision_recall_curve(positive, score)
        best_from_here = np.maximum.accumulate(precision[::-1])[::-1]  # recall is decreasing
        at_grid = [float(best_from_here[recall >= r].max()) for r in grid]
        pr_rows += [
            {"class": name, "recall": round(float(r), 2), "precision": round(p, 6)}
            for r, p in zip(grid, at_grid, strict=True)
        ]
    return scores, roc_rows, pr_rows


def misclassified_grid(
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    *,
    limit: int = 36,
    tile: int = 96,
) -> Any:
    """A PIL image: the ``limit`` most confidently wrong test images, each captioned
    ``true -> predicted (confidence)``, most confident first (same order as the CSV)."""
    from PIL import Image, ImageDraw

    predicted = probabilities.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[np.arange(len(labels)), predicted]
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:limit]
    columns = 6
    caption = 14
    rows = max(1, -(-len(wrong) // columns))
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    if not len(wrong):
        draw.text((4, 4), "no misclassified images", fill="black")
    for slot, i in enumerate(wrong):
        pixels = images[i]
        picture = Image.fromarray(pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels)
        picture = picture.convert("RGB").resize((tile - 4, tile - 4), Image.Resampling.NEAREST)
        x, y = (slot % columns) * tile, (slot // columns) * (tile + caption)
        sheet.paste(picture, (x + 2, y + 2))
        text = f"{classes[labels[i]]}->{classes[predicted[i]]} {confidence[i]:.2f}"
        draw.text((x + 2, y + tile), text[:16], fill="black")
    return sheet
