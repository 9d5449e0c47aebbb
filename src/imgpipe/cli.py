"""The ``imgpipe`` command: tools around the pipeline (the stages run via ``dvc repro``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from imgpipe import __version__
from imgpipe.errors import ImgpipeError
from imgpipe.runner import configure_logging, log

DEFAULT_ONNX = Path("models/model.onnx")


def check_params(args: argparse.Namespace) -> int:
    from imgpipe.params import load_params

    params = load_params(args.params)
    print(f"{args.params}: OK ({params.model}, {params.epochs} epochs, lr {params.lr:g})")
    return 0


def info(args: argparse.Namespace) -> int:
    from imgpipe.export import read_onnx_metadata

    print(json.dumps(read_onnx_metadata(args.model), indent=2, sort_keys=True))
    return 0


def predict(args: argparse.Namespace) -> int:
    """Classify image files with the exported model; one JSON line per image."""
    import numpy as np

    from imgpipe.features import OnnxClassifier
    from imgpipe.images import ImageDecodeError, decode_image

    classifier = OnnxClassifier(args.model)
    size, channels = int(classifier.meta["image_size"]), int(classifier.meta["channels"])
    failed = 0
    for path in args.images:
        try:
            pixels = decode_image(Path(path), size, channels)
        except (ImageDecodeError, OSError) as error:
            print(json.dumps({"file": str(path), "error": str(error)}))
            failed += 1
            continue
        probabilities, _ = classifier.run(pixels[np.newaxis])
        top = np.argsort(-probabilities[0])[: args.top_k]
        print(
            json.dumps(
                {
                    "file": str(path),
                    "top": [
                        {"class": classifier.classes[i], "probability": round(float(p), 6)}
                        for i, p in zip(top, probabilities[0][top], strict=True)
                    ],
                }
            )
        )
    return 1 if failed else 0


def drift(args: argparse.Namespace) -> int:
    """Exit 1 when drift is detected, so CI jobs and alerts can act on it."""
    from imgpipe.drift import run_drift

    result = run_drift(
        args.current, args.reference, args.model, args.out,
        drift_share=args.drift_share, embedding_threshold=args.embedding_threshold,
    )  # fmt: skip
    summary = result.summary
    print(
        f"drift {'DETECTED' if result.drifted else 'not detected'}: "
        f"{summary['features']['drifted_share']:.0%} of features drifted "
        f"(limit {args.drift_share:.0%}), embedding ROC AUC {summary['embedding']['score']:.3f} "
        f"(limit {args.embedding_threshold}); report: {args.out / 'report.html'}"
    )
    return 1 if result.drifted else 0


def report(args: argparse.Namespace) -> int:
    from imgpipe.report import write_report

    print(write_report(Path.cwd(), args.base, args.out))
    return 0


def check_metrics(args: argparse.Namespace) -> int:
    """Exit 1 when the workspace's metrics moved beyond the tolerance from ``--against``."""
    from imgpipe.report import metric_changes, metric_drift

    moved = metric_drift(metric_changes(Path.cwd(), args.against), args.tolerance, args.key)
    for change in moved:
        print(f"{change.file}: {change.key}: {change.old} -> {change.new} "
              f"(tolerance {args.tolerance:g})")  # fmt: skip
    if not moved:
        print(f"metrics match {args.against} within {args.tolerance:g}")
    return 1 if moved else 0


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from imgpipe.serve import ServeConfig, create_app

    config = ServeConfig(
        model=args.model,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_images=args.max_images,
        max_pixels=args.max_pixels,
        batch_window_ms=args.batch_window_ms,
        max_batch=args.max_batch,
        threads=args.threads,
        feature_log=None if args.no_feature_log else args.feature_log,
        feature_log_max_bytes=int(args.feature_log_max_mb * 2**20),
        feature_log_backups=args.feature_log_backups,
    )
    # One process on purpose: micro-batching joins requests inside it. Scale with replicas.
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.access_log)  # fmt: skip
    return 0


def bench_preprocess(args: argparse.Namespace) -> int:
    import tempfile

    from imgpipe.bench import bench_preprocess as run
    from imgpipe.io import write_json

    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-") as scratch:
        folder = args.folder or Path(scratch) / "jpegs"
        results = run(
            folder, Path(scratch) / "arrays",
            count=args.images, size=args.size, target=args.target, workers=args.workers,
        )  # fmt: skip
    print(json.dumps(results, indent=2))
    if args.output:
        write_json(args.output, results)
    return 0


def bench_serve(args: argparse.Namespace) -> int:
    import tempfile

    from imgpipe.bench import bench_serve as run
    from imgpipe.bench import export_random_model
    from imgpipe.io import write_json

    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-serve-") as scratch:
        model = args.model
        if args.architecture:
            model = export_random_model(
                Path(scratch) / "model.onnx", args.architecture, args.image_size, args.channels
            )
        results = run(
            model, concurrency=args.concurrency, requests=args.requests,
            max_batch=args.max_batch, batch_window_ms=args.batch_window_ms,
            threads=args.threads, log_dir=Path(scratch),
        )  # fmt: skip
    print(json.dumps(results, indent=2))
    if args.output:
        write_json(args.output, results)
    return 0


def bench_train(args: argparse.Namespace) -> int:
    from imgpipe.bench import bench_train as run
    from imgpipe.io import write_json
    from imgpipe.params import load_params
    from imgpipe.train import Augmentation

    p = load_params(args.params)
    configurations = [
        ("default", p.model, p.preprocess.image_size, p.preprocess.channels, p.batch_size),
        ("resnet18", "resnet18", 224, 3, args.resnet_batch_size),
    ]
    results = {}
    for name, architecture, size, channels, batch_size in configurations:
        if args.only and name not in args.only:
            continue
        results[name] = run(
            architecture=architecture, image_size=size, channels=channels,
            images=args.images if name == "default" else args.resnet_images,
            epochs=args.epochs, batch_size=batch_size, rounds=args.rounds,
            augmentation=Augmentation(**p.augment.model_dump()), ema_decay=p.ema_decay,
        )  # fmt: skip
        log.info("%s: %s", name, results[name])
    print(json.dumps(results, indent=2))
    if args.output:
        write_json(args.output, results)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgpipe",
        description="Tools around the imgpipe DVC pipeline. Run the pipeline itself with "
        "`dvc repro`; experiments with `dvc exp run -S lr=1e-4`.",
    )
    parser.add_argument("--version", action="version", version=f"imgpipe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub = commands.add_parser("check-params", help="validate params.yaml and exit")
    sub.add_argument("--params", type=Path, default=Path("params.yaml"), help="file to check")
    sub.set_defaults(handler=check_params)

    sub = commands.add_parser("info", help="print the metadata embedded in an exported model")
    sub.add_argument("model", type=Path, nargs="?", default=DEFAULT_ONNX, help="ONNX file")
    sub.set_defaults(handler=info)

    sub = commands.add_parser("predict", help="classify image files with the exported model")
    sub.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    sub.add_argument("--model", type=Path, default=DEFAULT_ONNX, help="ONNX file")
    sub.add_argument("--top-k", type=int, default=3, help="classes to print per image")
    sub.set_defaults(handler=predict)

    sub = commands.add_parser(
        "drift",
        help="compare images or logged features against the drift baseline (exit 1 on drift)",
    )
    sub.add_argument(
        "--current", type=Path, required=True,
        help="a folder of images, or a .parquet/.csv/.jsonl table of logged features",
    )  # fmt: skip
    sub.add_argument(
        "--reference", type=Path, default=Path("data/drift_baseline/reference.parquet"),
        help="reference table written by the drift-baseline stage",
    )  # fmt: skip
    sub.add_argument("--model", type=Path, default=DEFAULT_ONNX, help="ONNX model")
    sub.add_argument("--out", type=Path, default=Path("reports/drift"),
                     help="folder for report.html (Evidently) and drift.json")  # fmt: skip
    sub.add_argument("--drift-share", type=float, default=0.5,
                     help="share of drifting features that counts as drift")  # fmt: skip
    sub.add_argument("--embedding-threshold", type=float, default=0.55,
                     help="ROC AUC of a reference-vs-current classifier on embeddings above "
                     "which the embeddings count as drifted")  # fmt: skip
    sub.set_defaults(handler=drift)

    sub = commands.add_parser(
        "report", help="markdown for a PR comment: metrics/params diff and plots vs a base rev"
    )
    sub.add_argument("--base", required=True, help="git revision to compare against")
    sub.add_argument("--out", type=Path, default=Path("reports/pr"),
                     help="folder for report.md and plots/*.png")  # fmt: skip
    sub.set_defaults(handler=report)

    sub = commands.add_parser(
        "check-metrics", help="exit 1 when metrics differ from a revision's beyond a tolerance"
    )
    sub.add_argument("--against", required=True, help="git revision holding the expected metrics")
    sub.add_argument(
        "--tolerance", type=float, default=0.01,
        help="largest absolute difference accepted (GPU runs are not bit-identical)",
    )  # fmt: skip
    sub.add_argument("--key", action="append", default=[],
                     help="regex of metric keys to check (repeatable; default: all)")  # fmt: skip
    sub.set_defaults(handler=check_metrics)

    sub = commands.add_parser(
        "serve",
        help="HTTP service for the exported model: POST /predict, GET /health /metrics /docs /",
        description="Serve models/model.onnx with FastAPI + uvicorn + onnxruntime. Concurrent "
        "requests are micro-batched; per-image features go to a rotating JSON-lines log that "
        "`imgpipe drift --current` reads.",
    )
    sub.add_argument("--model", type=Path, default=DEFAULT_ONNX, help="ONNX file")
    sub.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: all)")
    sub.add_argument("--port", type=int, default=8000, help="TCP port")
    sub.add_argument("--max-upload-mb", type=float, default=16, help="largest request body")
    sub.add_argument("--max-images", type=int, default=32, help="most files per request")
    sub.add_argument("--max-pixels", type=int, default=25_000_000,
                     help="largest image (width x height), checked before decoding")  # fmt: skip
    sub.add_argument("--batch-window-ms", type=float, default=2.0,
                     help="how long a lone request waits for others to batch with")  # fmt: skip
    sub.add_argument("--max-batch", type=int, default=64, help="images per inference call")
    sub.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all cores)")
    sub.add_argument("--feature-log", type=Path, default=Path("logs/requests.jsonl"),
                     help="JSON-lines log of per-image features; rotated to "
                     "requests.1.jsonl, ...")  # fmt: skip
    sub.add_argument("--no-feature-log", action="store_true", help="do not log features")
    sub.add_argument("--feature-log-max-mb", type=float, default=50, help="rotate after this")
    sub.add_argument("--feature-log-backups", type=int, default=10, help="rotated files kept")
    sub.add_argument("--log-level", default="info", help="uvicorn log level")
    sub.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                     help="log one line per request")  # fmt: skip
    sub.set_defaults(handler=serve)

    bench = commands.add_parser("bench", help="benchmarks printing ratios from one run")
    benches = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    sub = benches.add_parser(
        "preprocess",
        help="decode+resize throughput, all cores vs one worker; peak memory vs array size",
    )
    sub.add_argument("--images", type=int, default=20_000, help="synthetic JPEGs to decode")
    sub.add_argument("--size", type=int, default=256, help="side of the synthetic JPEGs")
    sub.add_argument("--target", type=int, default=224, help="side to resize to")
    sub.add_argument("--workers", type=int, default=0, help="parallel run's processes (0: all)")
    sub.add_argument("--folder", type=Path, help="reuse/keep the synthetic JPEGs here")
    sub.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    sub.set_defaults(handler=bench_preprocess)

    sub = benches.add_parser(
        "train",
        help="train-stage images/s over a bare PyTorch loop (same model, batch, threads), for "
        "the params.yaml model and for resnet18 at 3x224x224, on synthetic data",
    )
    sub.add_argument("--params", type=Path, default=Path("params.yaml"),
                     help="model, batch size, augmentation and EMA of the default run")  # fmt: skip
    sub.add_argument("--images", type=int, default=3500,
                     help="training images, default model (the pipeline's split)")  # fmt: skip
    sub.add_argument("--resnet-images", type=int, default=256, help="training images, resnet18")
    sub.add_argument("--resnet-batch-size", type=int, default=32, help="batch size, resnet18")
    sub.add_argument("--epochs", type=int, default=2, help="epochs of each loop per round")
    sub.add_argument("--rounds", type=int, default=3, help="alternating rounds; best of each")
    sub.add_argument("--only", action="append", choices=["default", "resnet18"],
                     help="run one configuration only (repeatable)")  # fmt: skip
    sub.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    sub.set_defaults(handler=bench_train)

    sub = benches.add_parser(
        "serve",
        help="load test of imgpipe serve over loopback: req/s, p50/p95/p99, errors per "
        "concurrency, and served req/s over onnxruntime's batch images/s",
    )
    sub.add_argument("--model", type=Path, default=DEFAULT_ONNX, help="ONNX file")
    sub.add_argument("--architecture",
                     help="bench a randomly initialised timm model of this name instead of "
                     "--model (e.g. resnet18)")  # fmt: skip
    sub.add_argument("--image-size", type=int, default=224, help="input side, with --architecture")
    sub.add_argument("--channels", type=int, default=3, help="input channels, with --architecture")
    sub.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32],
                     help="concurrent clients, one level each")  # fmt: skip
    sub.add_argument("--requests", type=int, default=2000, help="one-image requests per level")
    sub.add_argument("--max-batch", type=int, default=64,
                     help="service batch limit, and the onnxruntime baseline's batch")  # fmt: skip
    sub.add_argument("--batch-window-ms", type=float, default=2.0, help="service batching window")
    sub.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all cores)")
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
