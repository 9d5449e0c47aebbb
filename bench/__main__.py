"""Benchmarks of imgpipe, one command each, printing ratios against a baseline measured in the
same run (shared, noisy machines make absolute timings meaningless across runs):

    python -m bench preprocess     decoding throughput, all cores vs one; peak memory
    python -m bench near-duplicates  the perceptual-hash search's cost against decoding
    python -m bench train          train stage vs a bare PyTorch loop
    python -m bench serve          imgpipe serve under load vs onnxruntime's batch rate

Run from the repository root in the project's environment (``./run.sh python -m bench ...``).
Not part of the installed package: its load client and memory sampler are dev dependencies.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from imgpipe.cli import pipeline_path
from imgpipe.errors import ImgpipeError
from imgpipe.stage import configure_logging

log = logging.getLogger("bench")
DEFAULT_ONNX = pipeline_path("onnx")


def emit(results: dict[str, Any], output: Path | None) -> int:
    """Print a benchmark's figures as JSON, and keep them in ``output`` when given."""
    from imgpipe.io import write_json

    print(json.dumps(results, indent=2))
    if output:
        write_json(output, results)
    return 0


def bench_preprocess(args: argparse.Namespace) -> int:
    from bench.bench import bench_preprocess as run

    return _jpeg_bench(args, run)


def bench_near_duplicates(args: argparse.Namespace) -> int:
    from bench.bench import bench_near_duplicates as run

    return _jpeg_bench(args, run, distance=args.distance)


def _jpeg_bench(args: argparse.Namespace, run: Callable[..., dict[str, Any]], **extra: Any) -> int:
    """A benchmark over a folder of synthetic JPEGs (kept in --folder, else temporary)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-") as scratch:
        folder = args.folder or Path(scratch) / "jpegs"
        results = run(
            folder,
            Path(scratch) / "arrays",
            count=args.images,
            size=args.size,
            target=args.target,
            workers=args.workers,
            **extra,
        )
    return emit(results, args.output)


def bench_serve(args: argparse.Namespace) -> int:
    import tempfile

    from bench.bench import bench_serve as run
    from bench.bench import export_random_model

    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-serve-") as scratch:
        model = args.model
        if args.architecture:
            model = export_random_model(
                Path(scratch) / "model.onnx", args.architecture, args.image_size, args.channels
            )
        models = {"fp32": model}
        if args.int8:  # the same model quantised as the export stage does, served alike
            models["int8"] = quantized_copy(model, Path(scratch) / "int8.onnx")
        results = {
            name: run(
                path,
                concurrency=args.concurrency,
                requests=args.requests,
                max_batch=args.max_batch,
                batch_window_ms=args.batch_window_ms,
                threads=args.threads,
                log_dir=Path(scratch),
            )
            for name, path in models.items()
        }
    if args.int8:
        fp32, int8 = results["fp32"], results["int8"]
        results["int8_over_fp32"] = {
            "onnxruntime_batch": round(
                int8["onnxruntime_batch"]["images_per_second"]
                / fp32["onnxruntime_batch"]["images_per_second"],
                2,
            ),
            "served_at_highest_concurrency": round(
                int8["levels"][-1]["requests_per_second"]
                / fp32["levels"][-1]["requests_per_second"],
                2,
            ),
        }
    else:
        results = results["fp32"]
    return emit(results, args.output)


def quantized_copy(model: Path, destination: Path) -> Path:
    """``model`` in int8, calibrated on 256 random images of its input size."""
    import numpy as np

    from imgpipe.export.quantize import quantize_int8
    from imgpipe.runtime.onnx_model import OnnxClassifier

    classifier = OnnxClassifier(model)
    shape = (256, classifier.image_size, classifier.image_size, classifier.channels)
    quantize_int8(model, destination, np.random.default_rng(0).integers(0, 256, shape, np.uint8))
    return destination


STRONG_RECIPE = {"augment": {"policy": "randaugment"}, "mixup": 0.2}  # the photo recipe's


def bench_train(args: argparse.Namespace) -> int:
    from bench.bench import bench_train as run
    from imgpipe.params import load_params

    p = load_params(args.params)
    configurations = {
        "default": (p.model, p.preprocess.image_size, p.preprocess.channels, p.batch_size, {}),
        "default+randaugment+mixup": (
            p.model,
            p.preprocess.image_size,
            p.preprocess.channels,
            p.batch_size,
            STRONG_RECIPE,
        ),
        "resnet18": ("resnet18", 224, 3, args.resnet_batch_size, {}),
        "resnet18+randaugment+mixup": ("resnet18", 224, 3, args.resnet_batch_size, STRONG_RECIPE),
    }
    results = {}
    for name, (architecture, size, channels, batch_size, recipe) in configurations.items():
        if args.only and name not in args.only:
            continue
        config = p.training().replace(
            model=architecture, batch_size=batch_size, epochs=args.epochs, warmup_epochs=0, **recipe
        )
        results[name] = run(
            config,
            image_size=size,
            channels=channels,
            rounds=args.rounds,
            images=args.images if name.startswith("default") else args.resnet_images,
        )
        log.info("%s: %s", name, results[name])
    return emit(results, args.output)


def bench_finetune(args: argparse.Namespace) -> int:
    from bench.bench import bench_finetune as run
    from imgpipe.params import load_params

    config = (
        load_params(args.params)
        .training()
        .replace(model=args.architecture, batch_size=args.batch_size, warmup_epochs=0)
    )
    results = run(config, image_size=args.image_size, images=args.images)
    return emit(results, args.output)


def bench_predict(args: argparse.Namespace) -> int:
    import tempfile

    from bench.bench import bench_predict as run
    from bench.bench import export_random_model

    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-predict-") as scratch:
        model = args.model
        if args.architecture:
            model = export_random_model(
                Path(scratch) / "model.onnx", args.architecture, args.image_size, 3
            )
        results = run(model, Path(scratch) / "images", count=args.images)
    return emit(results, args.output)


def add_jpeg_arguments(sub: argparse.ArgumentParser, *, workers: str) -> None:
    """The options of the benchmarks that decode a folder of synthetic JPEGs."""
    sub.add_argument("--images", type=int, default=20_000, help="synthetic JPEGs to decode")
    sub.add_argument("--size", type=int, default=256, help="side of the synthetic JPEGs")
    sub.add_argument("--target", type=int, default=224, help="side to resize to")
    sub.add_argument("--workers", type=int, default=0, help=workers)
    sub.add_argument("--folder", type=Path, help="reuse/keep the synthetic JPEGs here")
    sub.add_argument("--output", type=Path, help="also write the figures to this JSON file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="imgpipe benchmarks printing ratios from one run"
    )
    benches = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    sub = benches.add_parser(
        "preprocess",
        help="decode+resize throughput, all cores vs one worker; peak memory vs array size",
    )
    add_jpeg_arguments(sub, workers="parallel run's processes (0: all)")
    sub.set_defaults(handler=bench_preprocess)

    sub = benches.add_parser(
        "near-duplicates",
        help="perceptual hashing and the all-pairs search against preprocess's decoding",
    )
    add_jpeg_arguments(sub, workers="decoding processes (0: all)")
    sub.add_argument("--distance", type=int, default=32, help="largest distance in bits")
    sub.set_defaults(handler=bench_near_duplicates)

    sub = benches.add_parser(
        "train",
        help="train-stage images/s over a bare PyTorch loop (same model, batch, threads), for "
        "the params.yaml model and for resnet18 at 3x224x224, on synthetic data",
    )
    sub.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="model, batch size, augmentation and EMA of the default run",
    )
    sub.add_argument(
        "--images",
        type=int,
        default=3500,
        help="training images, default model (the pipeline's split)",
    )
    sub.add_argument("--resnet-images", type=int, default=128, help="training images, resnet18")
    sub.add_argument("--resnet-batch-size", type=int, default=32, help="batch size, resnet18")
    sub.add_argument("--epochs", type=int, default=2, help="epochs of each loop per round")
    sub.add_argument(
        "--rounds", type=int, default=7, help="interleaved rounds of bare loop and stage; median"
    )
    sub.add_argument(
        "--only",
        action="append",
        choices=["default", "default+randaugment+mixup", "resnet18", "resnet18+randaugment+mixup"],
        help="run one configuration only (repeatable)",
    )
    sub.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    sub.set_defaults(handler=bench_train)

    sub = benches.add_parser(
        "finetune",
        help="finetune: head against full fine-tuning: seconds per epoch once the feature cache "
        "exists, and the one-off cost of building it (resnet18 at 224 by default)",
    )
    sub.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="the training settings both runs share",
    )
    sub.add_argument("--architecture", default="resnet18", help="timm model")
    sub.add_argument("--image-size", type=int, default=224, help="input side (RGB)")
    sub.add_argument("--images", type=int, default=256, help="training images")
    sub.add_argument("--batch-size", type=int, default=32, help="images per step")
    sub.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    sub.set_defaults(handler=bench_finetune)

    sub = benches.add_parser(
        "predict",
        help="imgpipe predict (decode, batches, CSV) over onnxruntime alone on the same images",
    )
    sub.add_argument("--model", type=Path, default=DEFAULT_ONNX, help="ONNX file")
    sub.add_argument("--architecture", help="a randomly initialised timm model instead")
    sub.add_argument("--image-size", type=int, default=224, help="input side, --architecture")
    sub.add_argument("--images", type=int, default=2000, help="PNG files to classify")
    sub.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    sub.set_defaults(handler=bench_predict)

    sub = benches.add_parser(
        "serve",
        help="load test of imgpipe serve over loopback: req/s, p50/p95/p99, errors per "
        "concurrency, and served req/s over onnxruntime's batch images/s",
    )
    sub.add_argument("--model", type=Path, default=DEFAULT_ONNX, help="ONNX file")
    sub.add_argument(
        "--architecture",
        help="bench a randomly initialised timm model of this name instead of "
        "--model (e.g. resnet18)",
    )
    sub.add_argument("--image-size", type=int, default=224, help="input side, with --architecture")
    sub.add_argument("--channels", type=int, default=3, help="input channels, with --architecture")
    sub.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 8, 32],
        help="concurrent clients, one level each",
    )
    sub.add_argument("--requests", type=int, default=2000, help="one-image requests per level")
    sub.add_argument(
        "--max-batch",
        type=int,
        default=64,
        help="service batch limit, and the onnxruntime baseline's batch",
    )
    sub.add_argument("--batch-window-ms", type=float, default=2.0, help="service batching window")
    sub.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all cores)")
    sub.add_argument(
        "--int8",
        action="store_true",
        help="also serve the model quantised to int8, in the same run",
    )
    sub.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    sub.set_defaults(handler=bench_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ImgpipeError as error:
        log.error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
