"""Stage evaluate: score the trained model on the test split: accuracy, macro/weighted F1,
top-5 accuracy, calibration (ECE), one-vs-rest ROC/PR and, with evaluate.tta, the same after
test-time augmentation; per-class scores, the confusion matrix, and the misclassified images
(CSV, a PNG grid of the worst, and their Grad-CAM maps)."""

import argparse
import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np

from imgpipe.data.splits import SplitArrays, load_split
from imgpipe.evaluation.metrics import (
    calibration,
    classification_metrics,
    confusion_rows,
    gradcam_grid,
    misclassified_grid,
    misclassified_rows,
    one_vs_rest_curves,
    tta_views,
)
from imgpipe.io import atomic_path, write_json
from imgpipe.params import load_params
from imgpipe.stage import run_stage
from imgpipe.training.inference import predict_split, resolve_device
from imgpipe.training.model import load_checkpoint

log = logging.getLogger("imgpipe.stages.evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="checkpoint from train")
    parser.add_argument("--test", type=Path, required=True, help="preprocessed test split")
    parser.add_argument("--metrics", type=Path, required=True, help="headline metrics JSON")
    parser.add_argument("--plots", type=Path, required=True, help="folder for plot data")
    args = parser.parse_args()

    p = load_params()
    model, _ = load_checkpoint(args.model)
    test = load_split(args.test)
    device = resolve_device(p.device)
    model = model.to(device)
    probabilities = predict_split(model, test, p.evaluate.batch_size, device).numpy()
    metrics, per_class = score(test, probabilities)
    if p.evaluate.tta != "none":
        views = tta_views(p.evaluate.tta)
        augmented = predict_split(model, test, p.evaluate.batch_size, device, views).numpy()
        tta, _ = classification_metrics(test.labels, augmented, test.classes)
        metrics |= {f"tta_{name}": tta[name] for name in ("accuracy", "macro_f1")}
    write_json(args.metrics, metrics)
    write_plots(args.plots, test, probabilities, per_class)
    grid = gradcam_grid(model.cpu(), test.images, test.labels, probabilities, test.classes)
    with atomic_path(args.plots / "gradcam.png") as temporary:
        grid.save(temporary, format="PNG")
    log.info(
        "test accuracy %.4f, macro F1 %.4f, ECE %.4f",
        metrics["accuracy"],
        metrics["macro_f1"],
        metrics["ece"],
    )


def score(test: SplitArrays, probabilities: np.ndarray) -> tuple[dict[str, Any], list[dict]]:
    """Headline metrics, and one row of scores per class."""
    metrics, per_class = classification_metrics(test.labels, probabilities, test.classes)
    metrics["ece"], _ = calibration(test.labels, probabilities)
    separability, _, _ = one_vs_rest_curves(test.labels, probabilities, test.classes)
    for row in per_class:
        row.update(separability.get(row["class"], {}))
    for name in ("roc_auc", "average_precision"):
        values = [s[name] for s in separability.values()]
        metrics[f"macro_{name}"] = round(sum(values) / len(values), 6) if values else None
    return metrics, per_class


def write_plots(
    folder: Path, test: SplitArrays, probabilities: np.ndarray, per_class: list[dict]
) -> None:
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
    with atomic_path(folder / "misclassified.png") as temporary:
        grid.save(temporary, format="PNG")
    log.info("%d misclassified", len(wrong))


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    run_stage(main)
