"""Stage export-onnx: write the trained model as one ONNX file (dynamic batch, metadata
embedded, calibrate's temperature folded into its logits and its operating point in the
metadata) and fail unless onnxruntime reproduces torch's outputs within export.tolerance; with
export.int8, also a static int8 model, calibrated on training images, kept only when its
validation accuracy is within export.int8_max_drop of the fp32 model's and its validation ECE
within export.int8_max_ece_rise (with export.int8_float_convolutions auto, the fewest float
convolutions that pass)."""

import argparse
import logging
from pathlib import Path

from imgpipe.data.splits import load_split
from imgpipe.export.onnx import (
    calibration_metadata,
    check_parity,
    export_onnx,
    keep_head_for_drift,
    operating_point_metadata,
)
from imgpipe.export.quantize import export_int8
from imgpipe.io import atomic_path, file_sha256, read_json, write_json
from imgpipe.params import load_params
from imgpipe.stage import run_stage
from imgpipe.training.model import load_checkpoint

log = logging.getLogger("imgpipe.stages.export_onnx")

# An export bug (normalisation, padding, temperature) moves every image's outputs by percents,
# so a few dozen images find it; the torch side costs about 22 ms per 224 px photo on 2 cores.
PARITY_IMAGES = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="checkpoint from train")
    parser.add_argument("--calibration", type=Path, required=True, help="JSON from calibrate")
    parser.add_argument("--val", type=Path, required=True, help="split whose images check parity")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--train", type=Path, required=True, help="split to calibrate int8 on")
    parser.add_argument(
        "--int8",
        type=Path,
        required=True,
        help="folder of the int8 model.onnx (empty: off or rejected)",
    )
    parser.add_argument("--metrics", type=Path, required=True, help="export metrics JSON")
    parser.add_argument(
        "--graphs",
        type=Path,
        help="the feature cache: backbone graphs to reuse (the audit's), where the model's "
        "classifier head is kept for drift-baseline, and validation features to score fp32 on",
    )
    args = parser.parse_args()

    p = load_params().export
    model, meta = load_checkpoint(args.model)
    fitted = read_json(args.calibration)
    temperature = float(fitted["temperature"])
    provenance = {
        "checkpoint_sha256": file_sha256(args.model),
        "temperature": temperature,
        "calibration": calibration_metadata(fitted),
        "operating_point": operating_point_metadata(fitted),
    }
    val = load_split(args.val)
    images = val.images[:PARITY_IMAGES]
    # Parity is checked on the temporary file: a model that fails it never lands at --out.
    with atomic_path(args.out) as temporary:
        export_onnx(
            model, meta, temporary, p.opset, provenance, temperature=temperature, graphs=args.graphs
        )
        parity = check_parity(temporary, model, images, p.tolerance, temperature=temperature)
    keep_head_for_drift(args.out, model, p.opset, args.graphs)
    int8 = export_int8(
        args.out,
        args.int8,
        args.train,
        val,
        enabled=p.int8,
        calibration_images=p.calibration_images,
        max_drop=p.int8_max_drop,
        max_ece_rise=p.int8_max_ece_rise,
        float_convolutions=p.int8_float_convolutions,
        features=args.graphs,
    )
    write_json(
        args.metrics,
        int8
        | {
            "opset": p.opset,
            "size_bytes": args.out.stat().st_size,
            "tolerance": p.tolerance,
            "parity_images": parity.images,
            "max_abs_diff_logits": float(f"{parity.max_abs_diff_logits:.3g}"),
            "max_abs_diff_embedding": float(f"{parity.max_abs_diff_embedding:.3g}"),
            "max_relative_diff": float(f"{parity.max_relative_diff:.3g}"),
            "prediction_agreement": parity.prediction_agreement,
        },
    )
    # Timings vary run to run, so they are logged rather than written to a tracked output
    # (dvc.lock stays bit-for-bit reproducible); `imgpipe bench` measures them properly.
    log.info(
        "parity OK (max |diff| %.2g, %.2g of the outputs' scale); latency per image: torch "
        "%.3f ms, onnxruntime %.3f ms",
        max(parity.max_abs_diff_logits, parity.max_abs_diff_embedding),
        parity.max_relative_diff,
        parity.torch_ms_per_image,
        parity.onnxruntime_ms_per_image,
    )


if __name__ == "__main__":
    run_stage(main)
