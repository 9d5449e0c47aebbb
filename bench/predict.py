"""``python -m bench predict``: ``imgpipe predict`` (decode, batches, CSV) against onnxruntime
alone on the same images."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Clock, Commands, add_output_argument, emit, model_to_bench, png
from imgpipe.cli import pipeline_path

NAME = "predict"


def add_parser(benches: Commands) -> None:
    """Register the command on ``benches`` (an ``add_subparsers`` result)."""
    sub = benches.add_parser(
        NAME,
        help="imgpipe predict (decode, batches, CSV) over onnxruntime alone on the same images",
    )
    sub.add_argument("--model", type=Path, default=pipeline_path("onnx"), help="ONNX file")
    sub.add_argument("--architecture", help="a randomly initialised timm model instead")
    sub.add_argument("--image-size", type=int, default=224, help="input side, --architecture")
    sub.add_argument("--images", type=int, default=2000, help="PNG files to classify")
    add_output_argument(sub)
    sub.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-predict-") as scratch:
        model = model_to_bench(args.model, args.architecture, args.image_size, 3, Path(scratch))
        results = bench_predict(model, Path(scratch) / "images", count=args.images)
    emit(results, args.output)


def bench_predict(
    model: Path, folder: Path, *, count: int, clock: Clock = time.perf_counter
) -> dict[str, Any]:
    """``imgpipe predict`` on ``count`` PNGs (written once into ``folder``) into a CSV beside
    it, against onnxruntime alone on the same images already decoded, in batches of the same
    size."""
    from imgpipe.runtime.classify import DecodePolicy
    from imgpipe.runtime.onnx_model import OnnxClassifier
    from imgpipe.runtime.predictions import BATCH, find_inputs, predict_files, write_predictions

    classifier = OnnxClassifier(model)
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    shape = (classifier.image_size, classifier.image_size, classifier.channels)
    for index in range(count - len(list(folder.glob("*.png")))):
        (folder / f"{index:06d}.png").write_bytes(png(rng.integers(0, 256, shape, np.uint8)))
    files = find_inputs([folder])[:count]
    decoded = np.stack([DecodePolicy().decode(f, classifier) for f in files])
    started = clock()
    classifier.run(decoded, BATCH)
    bare = len(files) / (clock() - started)
    started = clock()
    predictions = predict_files(classifier, files, policy=DecodePolicy(), top_k=3)
    write_predictions(
        predictions, folder.parent / "predictions.csv", top_k=3, embedding_dims=0, stream=sys.stdout
    )
    served = len(files) / (clock() - started)
    return {
        "model": str(model),
        "images": len(files),
        "input": list(shape),
        "onnxruntime_images_per_second": round(bare, 1),
        "predict_images_per_second": round(served, 1),
        "ratio": round(served / bare, 3),
    }
