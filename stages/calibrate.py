"""Stage calibrate: fit the temperature that makes the trained model's probabilities
calibrated on the validation split (evaluate.calibration) and, for a screening task
(evaluate.positive_class), choose there the threshold that meets the target sensitivity or
specificity. evaluate applies both to the test split; export-onnx folds them into the model."""

import argparse
import logging
from pathlib import Path

from imgpipe.data.splits import load_split
from imgpipe.evaluation.calibration import calibration_summary, softmax
from imgpipe.evaluation.operating_point import choose_operating_point
from imgpipe.evaluation.temperature import fit_temperature, why_no_temperature
from imgpipe.io import write_json
from imgpipe.params import load_params
from imgpipe.stage import run_stage
from imgpipe.training.feature_cache import model_logits
from imgpipe.training.inference import resolve_device
from imgpipe.training.model import load_checkpoint

log = logging.getLogger("imgpipe.stages.calibrate")

NO_OPERATING_POINT = {"positive_class": None, "threshold": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="checkpoint from train")
    parser.add_argument("--val", type=Path, required=True, help="preprocessed validation split")
    parser.add_argument(
        "--features",
        type=Path,
        required=True,
        help="frozen-feature cache (finetune: head reuses the val split's features from it)",
    )
    parser.add_argument("--out", type=Path, required=True, help="calibration JSON to write")
    args = parser.parse_args()

    p = load_params()
    settings = p.evaluate
    model, meta = load_checkpoint(args.model)
    val = load_split(args.val)
    device = resolve_device(p.device)
    model = model.to(device)
    logits = model_logits(
        model, meta, val, settings.batch_size, device, cache=args.features, name="val"
    )
    unfit = why_no_temperature(logits, val.labels)
    fitted = settings.calibration == "temperature" and unfit is None
    temperature = fit_temperature(logits, val.labels) if fitted else 1.0
    summary = calibration_summary(val.labels, logits, temperature, settings.calibration)
    if settings.calibration == "temperature" and unfit is not None:
        log.warning("calibration skipped: %s", unfit)
        summary["temperature_note"] = unfit
    log.info(
        "temperature %.4g: validation ECE %.4f -> %.4f, NLL %.4f -> %.4f",
        temperature,
        summary["val_ece_uncalibrated"],
        summary["val_ece"],
        summary["val_nll_uncalibrated"],
        summary["val_nll"],
    )
    point: dict[str, object] = dict(NO_OPERATING_POINT)
    if settings.positive_class is not None:
        target = "sensitivity" if settings.target_sensitivity is not None else "specificity"
        choice = choose_operating_point(
            val.labels,
            softmax(logits, temperature),
            val.classes,
            settings.positive_class,
            target=target,
            target_value=settings.target_sensitivity or settings.target_specificity or 0.0,
        )
        point = choice.to_dict()
        if choice.threshold is None:
            log.warning("no operating point: %s", choice.note)
        else:
            log.info(
                "operating point for '%s': threshold %.4g (validation sensitivity %s, "
                "specificity %s)",
                choice.positive_class,
                choice.threshold,
                choice.val_sensitivity,
                choice.val_specificity,
            )
    write_json(args.out, summary | point)


if __name__ == "__main__":
    run_stage(main)
