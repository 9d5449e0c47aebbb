"""Stage evaluate: score the trained model on the test split: accuracy, macro/weighted F1,
top-5 accuracy, calibration (ECE), one-vs-rest ROC/PR and, with evaluate.tta, the same after
test-time augmentation; per-class scores, the confusion matrix, and the misclassified images
(CSV, a PNG grid of the worst, and their Grad-CAM maps)."""

import argparse
import logging
from pathlib import Path

from imgpipe.data.splits import load_split
from imgpipe.evaluation.metrics import score_split, tta_headline, tta_views
from imgpipe.evaluation.plots import write_plots
from imgpipe.io import write_json
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
    metrics, per_class = score_split(test, probabilities)
    if p.evaluate.tta != "none":
        views = tta_views(p.evaluate.tta)
        augmented = predict_split(model, test, p.evaluate.batch_size, device, views).numpy()
        metrics |= tta_headline(test, augmented)
    write_json(args.metrics, metrics)
    write_plots(args.plots, model.cpu(), test, probabilities, per_class)
    log.info(
        "test accuracy %.4f, macro F1 %.4f, ECE %.4f",
        metrics["accuracy"],
        metrics["macro_f1"],
        metrics["ece"],
    )


if __name__ == "__main__":
    run_stage(main)
