"""Stage evaluate: score the trained model on the test split: accuracy, macro/weighted F1,
per-class precision/recall/F1, confusion-matrix plot data and the misclassified images."""

import argparse
import csv
import logging
from pathlib import Path

from imgpipe.evaluate import classification_metrics, confusion_rows, misclassified_rows
from imgpipe.io import atomic_path, write_json
from imgpipe.model import load_checkpoint
from imgpipe.params import load_params
from imgpipe.preprocess import load_split
from imgpipe.runner import run_stage
from imgpipe.train import predict_split, resolve_device

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
    write_json(args.metrics, metrics)
    write_csv(args.plots / "confusion.csv", confusion_rows(test.labels, predicted, test.classes))
    wrong = misclassified_rows(test.labels, probabilities, test.classes, test.files)
    write_csv(
        args.plots / "misclassified.csv", wrong, ["file", "actual", "predicted", "confidence"]
    )
    log.info("test accuracy %.4f, macro F1 %.4f, %d misclassified",
             metrics["accuracy"], metrics["macro_f1"], len(wrong))  # fmt: skip


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    run_stage(main)
