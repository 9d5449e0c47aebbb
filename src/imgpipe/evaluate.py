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
