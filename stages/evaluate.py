"""Stage evaluate: score the trained model's calibrated probabilities on the test split:
accuracy, macro/weighted F1, top-5 accuracy, ECE (before and after calibration), one-vs-rest
ROC/PR, each headline with a 95% bootstrap interval (whole patients/clips resampled when the
split has groups); the operating point's sensitivity, specificity, PPV and NPV; group-level
results; and, with evaluate.tta, the same after test-time augmentation. Also per-class scores,
the confusion matrix, each image's probabilities, and the misclassified images (CSV, a PNG
grid of the worst, and their Grad-CAM maps)."""

import argparse
import logging
from pathlib import Path
from typing import Any

from imgpipe.data.splits import load_split
from imgpipe.evaluation.bootstrap import OperatingPoint
from imgpipe.evaluation.calibration import calibration, softmax
from imgpipe.evaluation.metrics import (
    group_metrics,
    operating_point_metrics,
    score_split,
    tta_headline,
    tta_views,
    with_intervals,
)
from imgpipe.evaluation.plots import write_plots
from imgpipe.io import read_json, write_json
from imgpipe.params import load_params
from imgpipe.stage import run_stage
from imgpipe.training.feature_cache import model_logits
from imgpipe.training.inference import predict_split, resolve_device
from imgpipe.training.model import load_checkpoint

log = logging.getLogger("imgpipe.stages.evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="checkpoint from train")
    parser.add_argument("--calibration", type=Path, required=True, help="JSON from calibrate")
    parser.add_argument("--test", type=Path, required=True, help="preprocessed test split")
    parser.add_argument(
        "--features",
        type=Path,
        required=True,
        help="frozen-feature cache (finetune: head reuses the test split's features from it)",
    )
    parser.add_argument("--metrics", type=Path, required=True, help="headline metrics JSON")
    parser.add_argument("--plots", type=Path, required=True, help="folder for plot data")
    args = parser.parse_args()

    p = load_params()
    settings = p.evaluate
    device = resolve_device(p.device)
    model, meta = load_checkpoint(args.model)
    model = model.to(device)
    fitted = read_json(args.calibration)
    temperature = float(fitted["temperature"])
    test = load_split(args.test)
    logits = model_logits(
        model, meta, test, settings.batch_size, device, cache=args.features, name="test"
    )
    probabilities, uncalibrated = softmax(logits, temperature), softmax(logits)
    point = operating_point(fitted, test.classes)

    metrics, per_class = score_split(test.labels, probabilities, test.classes)
    metrics["ece_uncalibrated"], _ = calibration(test.labels, uncalibrated)
    metrics["temperature"] = temperature
    if point is not None:
        metrics |= operating_point_metrics(test.labels, probabilities, point)
    elif fitted.get("operating_point_note"):
        metrics["operating_point_note"] = fitted["operating_point_note"]
        log.warning("no operating point: %s", fitted["operating_point_note"])
    metrics = with_intervals(
        metrics,
        test.labels,
        probabilities,
        groups=test.groups,
        point=point,
        resamples=settings.bootstrap_resamples,
    )
    if test.groups is not None:
        metrics |= group_metrics(
            test.labels,
            probabilities,
            test.classes,
            test.groups,
            point=point,
            resamples=settings.bootstrap_resamples,
        )
    if settings.tta != "none":
        views = tta_views(settings.tta)
        augmented = predict_split(
            model, test, settings.batch_size, device, views, temperature=temperature
        ).numpy()
        metrics |= tta_headline(test, augmented)
    write_json(args.metrics, metrics)
    write_plots(
        args.plots,
        model.cpu(),
        test,
        probabilities,
        per_class,
        uncalibrated=uncalibrated,
        point=point,
    )
    log_summary(metrics)


def operating_point(fitted: dict[str, Any], classes: list[str]) -> OperatingPoint | None:
    """The threshold calibrate chose on the validation split, if it chose one."""
    threshold, positive = fitted.get("threshold"), fitted.get("positive_class")
    if threshold is None or positive not in classes:
        return None
    return OperatingPoint(classes.index(positive), float(threshold))


def log_summary(metrics: dict[str, Any]) -> None:
    def interval(name: str) -> str:
        low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
        return f"{metrics[name]} [{low}, {high}]" if low is not None else str(metrics[name])

    groups = metrics.get("test_groups")
    log.info(
        "test split: %s images%s; accuracy %s, macro F1 %s (95%% intervals); ECE %s "
        "(uncalibrated %s)",
        metrics["test_images"],
        f" in {groups} groups" if groups is not None else "",
        interval("accuracy"),
        interval("macro_f1"),
        metrics["ece"],
        metrics["ece_uncalibrated"],
    )
    if "sensitivity" in metrics:
        log.info(
            "at threshold %.4g: sensitivity %s, specificity %s",
            metrics["threshold"],
            interval("sensitivity"),
            interval("specificity"),
        )
    if "group_accuracy" in metrics:
        log.info("per group: accuracy %s", interval("group_accuracy"))


if __name__ == "__main__":
    run_stage(main)
