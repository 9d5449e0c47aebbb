"""The ``imgpipe`` command: tools around the pipeline (the stages run via ``dvc repro``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

import yaml

from imgpipe import __version__
from imgpipe.errors import ImgpipeError
from imgpipe.runtime.classify import CLASSES_REPORTED, SERVED_MAX_PIXELS
from imgpipe.serving.baseline import DEFAULT_BASELINE
from imgpipe.serving.settings import ServeConfig
from imgpipe.stage import configure_logging, log

# What add_subparsers returns (argparse names no public type for it).
_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def pipeline_path(name: str, dvc_yaml: Path = Path("dvc.yaml")) -> Path | None:
    """A path that ``dvc.yaml`` names in its ``vars`` (``onnx``, ``drift_reference``, ...), when
    the command runs in a checkout: the defaults of the options that point at pipeline outputs."""
    try:
        blocks = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")).get("vars", [])
        paths = next(b["paths"] for b in blocks if isinstance(b, dict) and "paths" in b)
        return Path(paths[name])
    except (OSError, yaml.YAMLError, AttributeError, StopIteration, KeyError, TypeError):
        return None


def _given(path: Path | None, option: str) -> Path:
    if path is None:
        raise ImgpipeError(
            f"{option}: no dvc.yaml here to take the pipeline's path from; pass {option}"
        )
    return path


def check_params(args: argparse.Namespace) -> int:
    from imgpipe.params import load_params

    params = load_params(args.params)
    print(f"{args.params}: OK ({params.model}, {params.epochs} epochs, lr {params.lr:g})")
    return 0


def info(args: argparse.Namespace) -> int:
    from imgpipe.runtime.onnx_model import read_onnx_metadata

    print(json.dumps(read_onnx_metadata(_given(args.model, "--model")), indent=2, sort_keys=True))
    return 0


def predict(args: argparse.Namespace) -> int:
    """Classify files and folders (recursively) with the exported model, in batches, decoded
    under the service's policy (formats, pixel limit), video files frame by frame: JSON lines
    on stdout, or a table with ``--output``; a model with an operating point adds each image's
    positive_probability and decision. Exit 1 when some file could not be classified (its row
    says why)."""
    from tqdm import tqdm

    from imgpipe.data.video import FrameRate, is_video
    from imgpipe.runtime.classify import DecodePolicy
    from imgpipe.runtime.onnx_model import OnnxClassifier
    from imgpipe.runtime.predictions import find_inputs, predict_files, write_predictions

    classifier = OnnxClassifier(_given(args.model, "--model"), threshold=args.threshold)
    if (point := classifier.operating_point) is not None:
        log.info("decision: positive when P(%s) >= %r", point.positive_class, point.threshold)
    files = find_inputs([Path(p) for p in args.inputs])
    try:
        frames = FrameRate(args.frames_per_second, args.frame_stride, args.max_frames)
    except ValueError:
        raise ImgpipeError(
            "--frames-per-second, --max-frames must be >= 0 and --frame-stride >= 1"
        ) from None
    predictions = predict_files(
        classifier,
        files,
        policy=DecodePolicy(max_pixels=args.max_pixels),
        top_k=args.top_k,
        embeddings=args.embeddings,
        frames=frames,
    )
    # With videos the number of rows is known only as their frames are decoded.
    total = None if any(is_video(f) for f in files) else len(files)
    shown = tqdm(predictions, total=total, desc="predict", unit="img", disable=None)
    rows, errors = write_predictions(
        shown,
        args.output,
        top_k=args.top_k,
        embedding_dims=classifier.embedding_dims if args.embeddings else 0,
        stream=sys.stdout,
        decisions=point is not None,
    )
    log.info(
        "%d images or frames classified, %d files could not be%s",
        rows - errors,
        errors,
        f"; {args.output}" if args.output else "",
    )
    return 1 if errors else 0


def drift(args: argparse.Namespace) -> int:
    """Exit 1 when drift is detected, so CI jobs and alerts can act on it; the result also as
    Prometheus gauges, for the drift alerts, when asked."""
    from imgpipe.monitoring.drift import run_drift
    from imgpipe.monitoring.drift_metrics import check_textfile, export_drift

    check_textfile(args.prometheus_textfile)
    result = run_drift(
        args.current,
        _given(args.reference, "--reference"),
        _given(args.model, "--model"),
        args.out,
        drift_share=args.drift_share,
        embedding_threshold=args.embedding_threshold,
    )
    summary = result.summary
    print(
        f"drift {'DETECTED' if result.drifted else 'not detected'}: "
        f"{summary['features']['drifted_share']:.0%} of features drifted "
        f"(limit {args.drift_share:.0%}), embedding ROC AUC {summary['embedding']['score']:.3f} "
        f"(limit {args.embedding_threshold}); report: {args.out / 'report.html'}"
    )
    if args.prometheus_textfile is not None or args.pushgateway is not None:
        export_drift(summary, textfile=args.prometheus_textfile, pushgateway=args.pushgateway)
    return 1 if result.drifted else 0


def report(args: argparse.Namespace) -> int:
    from imgpipe.report import write_report

    print(write_report(Path.cwd(), args.base, args.out, data_images=args.data_images))
    return 0


def convert_weights(args: argparse.Namespace) -> int:
    from imgpipe.training.foreign_weights import convert_weights as convert

    count = convert(args.source, args.model, args.out)
    print(
        f"{args.out}: {count} tensors of {args.source} under timm's {args.model} names "
        f"(paired in order, every shape alike); use it with -S model={args.model} "
        f"-S pretrained={args.out}"
    )
    return 0


def check_metrics(args: argparse.Namespace) -> int:
    """Exit 1 when the workspace's metrics moved beyond the tolerance from ``--against``."""
    from imgpipe.report import metric_changes, metric_drift

    moved = metric_drift(metric_changes(Path.cwd(), args.against), args.tolerance, args.key)
    for change in moved:
        print(
            f"{change.file}: {change.key}: {change.old} -> {change.new} "
            f"(tolerance {args.tolerance:g})"
        )
    if not moved:
        print(f"metrics match {args.against} within {args.tolerance:g}")
    return 1 if moved else 0


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from imgpipe.serving.app import create_app

    config = ServeConfig(
        model=_given(args.model, "--model"),
        token=_access_token(args.token_file),
        token_for_metrics=args.token_for_metrics,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_images=args.max_images,
        max_pixels=args.max_pixels,
        batch_window_ms=args.batch_window_ms,
        max_batch=args.max_batch,
        threads=args.threads,
        feature_log=None if args.no_feature_log else args.feature_log,
        feature_log_max_bytes=int(args.feature_log_max_mb * 2**20),
        feature_log_backups=args.feature_log_backups,
        threshold=args.threshold,
        baseline=_served_baseline(args),
    )
    # One process on purpose: micro-batching joins requests inside it. Scale with replicas.
    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
    )
    return 0


def _served_baseline(args: argparse.Namespace) -> Path | None:
    """The drift-baseline summary the service exports for its alerts: the one given, else the
    checkout's when the checkout's own model is served (another model's would not match)."""
    if args.no_baseline:
        return None
    if args.baseline is not None:
        return Path(args.baseline)
    own_model = args.model is not None and args.model == pipeline_path("onnx")
    return DEFAULT_BASELINE if own_model and DEFAULT_BASELINE.is_file() else None


def _access_token(token_file: Path | None) -> str | None:
    """The service's bearer token: from a file, or the IMGPIPE_TOKEN environment variable
    (never a command-line argument, which other users of the machine can read)."""
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ImgpipeError(f"--token-file {token_file}: {error.strerror}") from None
        if not token:
            raise ImgpipeError(f"--token-file {token_file}: the file is empty")
        return token
    return os.environ.get("IMGPIPE_TOKEN") or None


def build_parser() -> argparse.ArgumentParser:
    """The ``imgpipe`` parser: one sub-command per handler above, each added by its own
    ``_add_*`` function below."""
    onnx = pipeline_path("onnx")
    parser = argparse.ArgumentParser(
        prog="imgpipe",
        description="Tools around the imgpipe DVC pipeline. Run the pipeline itself with "
        "`dvc repro`; experiments with `dvc exp run -S lr=1e-4`.",
    )
    parser.add_argument("--version", action="version", version=f"imgpipe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_check_params(commands)
    _add_info(commands, onnx)
    _add_predict(commands, onnx)
    _add_drift(commands, onnx)
    _add_report(commands)
    _add_check_metrics(commands)
    _add_convert_weights(commands)
    _add_serve(commands, onnx)
    return parser


def _model_help(onnx: Path | None) -> str:
    return f"ONNX file (default: dvc.yaml's {onnx})" if onnx else "ONNX file"


def _add_check_params(commands: _Commands) -> None:
    sub = commands.add_parser("check-params", help="validate params.yaml and exit")
    sub.add_argument("--params", type=Path, default=Path("params.yaml"), help="file to check")
    sub.set_defaults(handler=check_params)


def _add_info(commands: _Commands, onnx: Path | None) -> None:
    model_help = _model_help(onnx)
    sub = commands.add_parser("info", help="print the metadata embedded in an exported model")
    sub.add_argument("model", type=Path, nargs="?", default=onnx, help=model_help)
    sub.set_defaults(handler=info)


def _add_predict(commands: _Commands, onnx: Path | None) -> None:
    model_help = _model_help(onnx)
    sub = commands.add_parser(
        "predict",
        help="classify image and video files and folders with the exported model, in batches",
    )
    sub.add_argument(
        "inputs", nargs="+", help="image or video files, or folders (searched recursively)"
    )
    sub.add_argument(
        "--output", type=Path, help="a .csv, .parquet or .jsonl table (default: stdout)"
    )
    sub.add_argument(
        "--embeddings",
        action="store_true",
        help="add the penultimate-layer embedding (emb_* columns)",
    )
    sub.add_argument("--model", type=Path, default=onnx, help=model_help)
    sub.add_argument(
        "--top-k", type=int, default=CLASSES_REPORTED, help="classes to print per image"
    )
    _add_threshold(sub)
    sub.add_argument(
        "--max-pixels",
        type=int,
        default=SERVED_MAX_PIXELS,
        help="largest image (width x height), checked before decoding",
    )
    sub.add_argument(
        "--frames-per-second",
        type=float,
        default=1.0,
        help="video: frames classified per second of video; 0: every "
        "--frame-stride-th frame (default 1, as preprocess)",
    )
    sub.add_argument(
        "--frame-stride",
        type=int,
        default=1,
        help="video, --frames-per-second 0: every this-many-th frame",
    )
    sub.add_argument(
        "--max-frames",
        type=int,
        default=0,
        help="video: the first this many selected frames of each; 0: all",
    )
    sub.set_defaults(handler=predict)


def _add_threshold(sub: argparse.ArgumentParser) -> None:
    """``--threshold``, shared by predict and serve: the one decision rule both apply."""
    sub.add_argument(
        "--threshold",
        type=float,
        help="decide positive when the positive class's probability is at least this "
        "(default: the operating point chosen on the validation split, in the model)",
    )


def _add_drift(commands: _Commands, onnx: Path | None) -> None:
    model_help = _model_help(onnx)
    sub = commands.add_parser(
        "drift",
        help="compare images or logged features against the drift baseline (exit 1 on drift)",
    )
    sub.add_argument(
        "--current",
        type=Path,
        required=True,
        help="a folder of images, or a .parquet/.csv/.jsonl table of logged features",
    )
    sub.add_argument(
        "--reference",
        type=Path,
        default=pipeline_path("drift_reference"),
        help="reference table written by the drift-baseline stage (default: dvc.yaml's)",
    )
    sub.add_argument("--model", type=Path, default=onnx, help=model_help)
    sub.add_argument(
        "--out",
        type=Path,
        default=Path("reports/drift"),
        help="folder for report.html (Evidently) and drift.json",
    )
    sub.add_argument(
        "--drift-share",
        type=float,
        default=0.5,
        help="share of drifting features that counts as drift",
    )
    sub.add_argument(
        "--embedding-threshold",
        type=float,
        default=0.55,
        help="ROC AUC of a reference-vs-current classifier on embeddings above "
        "which the embeddings count as drifted",
    )
    sub.add_argument(
        "--prometheus-textfile",
        type=Path,
        help="also write the result as Prometheus gauges to this .prom file "
        "(node_exporter's textfile collector)",
    )
    sub.add_argument(
        "--pushgateway",
        metavar="URL",
        help="also push the result as Prometheus gauges to this Pushgateway (job imgpipe_drift)",
    )
    sub.set_defaults(handler=drift)


def _add_report(commands: _Commands) -> None:
    sub = commands.add_parser(
        "report", help="markdown for a PR comment: metrics/params diff and plots vs a base rev"
    )
    sub.add_argument("--base", required=True, help="git revision to compare against")
    sub.add_argument(
        "--out", type=Path, default=Path("reports/pr"), help="folder for report.md and plots/*.png"
    )
    sub.add_argument(
        "--data-images",
        action="store_true",
        help="also include image plots made of your data (the misclassified and "
        "Grad-CAM grids, the audit's suspects); left out by default, since PR comments "
        "may publish images to a public host",
    )
    sub.set_defaults(handler=report)


def _add_check_metrics(commands: _Commands) -> None:
    sub = commands.add_parser(
        "check-metrics", help="exit 1 when metrics differ from a revision's beyond a tolerance"
    )
    sub.add_argument("--against", required=True, help="git revision holding the expected metrics")
    sub.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="largest absolute difference accepted (GPU runs are not bit-identical)",
    )
    sub.add_argument(
        "--key",
        action="append",
        default=[],
        help="regex of metric keys to check (repeatable; default: all)",
    )
    sub.set_defaults(handler=check_metrics)


def _add_convert_weights(commands: _Commands) -> None:
    sub = commands.add_parser(
        "convert-weights",
        help="rename another project's pretrained weights to a timm model's names (offline)",
        description="Pair the tensors of SOURCE (a .pth or .bin state dict, or a checkpoint "
        "holding one; not .safetensors, which keeps no order) in order with timm's MODEL, "
        "check that every pair's shapes agree, and write them under timm's names: a file "
        "`pretrained:` takes. Without the hub, weights from a wheel or a paper's release come "
        "this way.",
    )
    sub.add_argument("source", type=Path, help="the foreign weights file")
    sub.add_argument("--model", required=True, help="timm model the weights are for")
    sub.add_argument(
        "--out",
        type=Path,
        required=True,
        help="file to write under weights/ (.pth, or .safetensors)",
    )
    sub.set_defaults(handler=convert_weights)


def _add_serve(commands: _Commands, onnx: Path | None) -> None:
    model_help = _model_help(onnx)
    served = ServeConfig(model=Path())  # the service's defaults
    sub = commands.add_parser(
        "serve",
        help="HTTP service for the exported model: POST /predict, GET /health /metrics /docs /",
        description="Serve models/model.onnx with FastAPI + uvicorn + onnxruntime. Concurrent "
        "requests are micro-batched; per-image features go to a rotating JSON-lines log that "
        "`imgpipe drift --current` reads.",
    )
    sub.add_argument("--model", type=Path, default=onnx, help=model_help)
    sub.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: all)")
    sub.add_argument("--port", type=int, default=8000, help="TCP port")
    sub.add_argument(
        "--max-upload-mb",
        type=float,
        default=served.max_upload_bytes / 2**20,
        help="largest request body",
    )
    sub.add_argument(
        "--max-images", type=int, default=served.max_images, help="most files per request"
    )
    sub.add_argument(
        "--max-pixels",
        type=int,
        default=served.max_pixels,
        help="largest image (width x height), checked before decoding",
    )
    sub.add_argument(
        "--batch-window-ms",
        type=float,
        default=served.batch_window_ms,
        help="how long a lone request waits for others to batch with",
    )
    sub.add_argument(
        "--max-batch", type=int, default=served.max_batch, help="images per inference call"
    )
    sub.add_argument(
        "--threads", type=int, default=served.threads, help="onnxruntime threads (0: all cores)"
    )
    _add_threshold(sub)
    _add_serve_logging(sub, served)
    _add_serve_baseline(sub)
    sub.add_argument(
        "--token-file",
        type=Path,
        help="require `Authorization: Bearer <token>` on /predict, the token read "
        "from this file (or set IMGPIPE_TOKEN); /health stays open",
    )
    sub.add_argument(
        "--token-for-metrics", action="store_true", help="require the token on /metrics too"
    )
    sub.add_argument("--log-level", default="info", help="uvicorn log level")
    sub.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log one line per request",
    )
    sub.set_defaults(handler=serve)


def _add_serve_baseline(sub: argparse.ArgumentParser) -> None:
    """``serve``'s options for the drift baseline its confidence and class-mix alerts need."""
    sub.add_argument(
        "--baseline",
        type=Path,
        help="drift-baseline summary to export as imgpipe_baseline_* gauges for the alerts "
        f"(default: {DEFAULT_BASELINE} when serving the checkout's own model)",
    )
    sub.add_argument(
        "--no-baseline", action="store_true", help="export no baseline, even when one exists"
    )


def _add_serve_logging(sub: argparse.ArgumentParser, served: ServeConfig) -> None:
    """``serve``'s options for the feature log that ``imgpipe drift --current`` reads."""
    sub.add_argument(
        "--feature-log",
        type=Path,
        default=Path("logs/requests.jsonl"),
        help="JSON-lines log of per-image features; rotated to requests.1.jsonl, ...",
    )
    sub.add_argument("--no-feature-log", action="store_true", help="do not log features")
    sub.add_argument(
        "--feature-log-max-mb",
        type=float,
        help="rotate after this",
        default=served.feature_log_max_bytes / 2**20,
    )
    sub.add_argument(
        "--feature-log-backups",
        type=int,
        default=served.feature_log_backups,
        help="rotated files kept",
    )


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
