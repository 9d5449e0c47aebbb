"""Stage evaluate: score the trained model on the test split: accuracy, macro/weighted F1,
per-class precision/recall/F1, calibration (ECE), one-vs-rest ROC/PR, the confusion matrix and
the misclassified images (CSV and a PNG grid of the worst)."""

import argparse
import csv
import logging
from pathlib import Path

from imgpipe.evaluate import (
    calibration,
    classification_metrics,
    confusion_rows,
    misclassified_grid,
    misclassified_rows,
    one_vs_rest_curves,
)
from imgpipe.inference import predict_split, resolve_device
from imgpipe.io import atomic_path, write_json
from imgpipe.model import load_checkpoint
from imgpipe.params import load_params
from imgpipe.runner import run_stage
from imgpipe.splits import load_split

log = logging.getLogger("imgpipe.stages.evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="checkpoint from train")
    parser.add_argument("--test", type=Path, required=True, help="preprocessed test split")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--plots", type=Path, required=True, help="folder for plot data")
    args = parser.parse_args()

    p = load_params()
    model, _ = load_checkpoint(args.model)
    test = load_split(args.test)
    device = resolve_device(p.device)
    probabilities = predict_split(model.to(device), test, p.evaluate.batch_size, device).numpy()
    predicted = probabilities.argmax(1)

    metrics = classification_metrics(test.labels, predicted, test.classes)
    metrics["ece"], reliability = calibration(test.labels, probabilities)
    separability, roc, precision_recall = one_vs_rest_curves(
        test.labels, probabilities, test.classes
    )
    for name, scores in separability.items():
        metrics["per_class"][name].update(scores)
    for score in ("roc_auc", "average_precision"):
        values = [s[score] for s in separability.values()]
        metrics[f"macro_{score}"] = round(sum(values) / len(values), 6) if values else None
    write_json(args.metrics, metrics)

    write_csv(
        args.plots / "confusion.csv",
        confusion_rows(test.labels, predicted, test.classes),
        ["actual", "predicted"],
    )
    write_csv(args.plots / "calibration.csv", reliability, ["confidence", "accuracy", "images"])
    write_csv(args.plots / "roc.csv", roc, ["class", "fpr", "tpr"])
    write_csv(
        args.plots / "precision_recall.csv", precision_recall, ["class", "recall", "precision"]
    )
    wrong = misclassified_rows(test.labels, probabilities, test.classes, test.files)
    write_csv(
        args.plots / "misclassified.csv", wrong, ["file", "actual", "predicted", "confidence"]
    )
    grid = misclassified_grid(test.images, test.labels, probabilities, test.classes)
    with atomic_path(args.plots / "misclassified.png") as temporary:
        grid.save(temporary, format="PNG")
    log.info("test accuracy %.4f, macro F1 %.4f, ECE %.4f, %d misclassified",
             metrics["accuracy"], metrics["macro_f1"], metrics["ece"], len(wrong))  # fmt: skip


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    run_stage(main)
