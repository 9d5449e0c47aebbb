"""``python -m bench serve``: a load test of ``imgpipe serve`` over loopback (req/s,
p50/p95/p99 and errors per concurrency) against onnxruntime's own batch images/s."""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Commands, add_output_argument, emit, log, model_to_bench, png
from imgpipe.cli import pipeline_path
from imgpipe.errors import ImgpipeError

NAME = "serve"


def add_parser(benches: Commands) -> None:
    """Register the command on ``benches`` (an ``add_subparsers`` result)."""
    sub = benches.add_parser(
        NAME,
        help="load test of imgpipe serve over loopback: req/s, p50/p95/p99, errors per "
        "concurrency, and served req/s over onnxruntime's batch images/s",
    )
    sub.add_argument("--model", type=Path, default=pipeline_path("onnx"), help="ONNX file")
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
    add_output_argument(sub)
    sub.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """The model, and with --int8 its quantisation served alike, under load one after another."""
    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-serve-") as scratch:
        model = model_to_bench(
            args.model, args.architecture, args.image_size, args.channels, Path(scratch)
        )
        models = {"fp32": model}
        if args.int8:  # the same model quantised as the export stage does, served alike
            models["int8"] = quantized_copy(model, Path(scratch) / "int8.onnx")
        results = {
            name: bench_serve(
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
        results["int8_over_fp32"] = int8_over_fp32(results["fp32"], results["int8"])
    else:
        results = results["fp32"]
    emit(results, args.output)


def int8_over_fp32(fp32: dict[str, Any], int8: dict[str, Any]) -> dict[str, float]:
    """The int8 model's rates over the fp32 one's, from two :func:`bench_serve` results."""
    return {
        "onnxruntime_batch": round(
            int8["onnxruntime_batch"]["images_per_second"]
            / fp32["onnxruntime_batch"]["images_per_second"],
            2,
        ),
        "served_at_highest_concurrency": round(
            int8["levels"][-1]["requests_per_second"] / fp32["levels"][-1]["requests_per_second"],
            2,
        ),
    }


def quantized_copy(model: Path, destination: Path) -> Path:
    """``model`` in int8, calibrated on 256 random images of its input size."""
    from imgpipe.export.quantize import quantize_int8
    from imgpipe.runtime.onnx_model import OnnxClassifier

    classifier = OnnxClassifier(model)
    shape = (256, classifier.image_size, classifier.image_size, classifier.channels)
    calibration = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
    # the first convolution float, the try export.int8_float_convolutions: auto starts with
    quantize_int8(model, destination, calibration, float_convolutions=1)
    return destination


def bench_serve(
    model: Path,
    *,
    concurrency: list[int],
    requests: int,
    max_batch: int,
    batch_window_ms: float,
    threads: int,
    log_dir: Path,
) -> dict[str, Any]:
    """Load-test ``imgpipe serve`` over loopback against onnxruntime's own batch throughput.

    The baseline is the exported model in onnxruntime, in this process, on ``max_batch`` images
    at a time with the same thread count: what the service could do with zero HTTP, decoding and
    batching cost. The service then runs in a subprocess (as deployed: one uvicorn process, the
    feature log on, in ``log_dir``) and is sent one-image PNG requests by ``c`` concurrent
    clients for each ``c`` in ``concurrency``.
    """
    from imgpipe.runtime.onnx_model import OnnxClassifier

    classifier = OnnxClassifier(model, threads=threads)
    size, channels = classifier.image_size, classifier.channels
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max_batch, size, size, channels), dtype=np.uint8)
    baseline = _onnxruntime_images_per_second(classifier, images)
    del classifier
    payloads = [png(image) for image in images[:16]]
    levels = []
    port = _free_port()
    command = _serve_command(
        model,
        port,
        max_batch=max_batch,
        batch_window_ms=batch_window_ms,
        threads=threads,
        log_dir=log_dir,
    )
    with subprocess.Popen(command) as server:
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_up(url, server)
            for clients in concurrency:
                level = asyncio.run(_load(url, payloads, clients, requests))
                level["ratio_to_onnxruntime_batch"] = round(
                    level["requests_per_second"] / baseline, 3
                )
                log.info("concurrency %d: %s", clients, level)
                levels.append(level)
        finally:
            server.terminate()
            server.wait(timeout=30)
    return {
        "model": str(model),
        "image_size": size,
        "onnxruntime_batch": {"batch": max_batch, "images_per_second": round(baseline, 1)},
        "levels": levels,
        "best_ratio_to_onnxruntime_batch": max(
            level["ratio_to_onnxruntime_batch"] for level in levels
        ),
    }


def _serve_command(
    model: Path, port: int, *, max_batch: int, batch_window_ms: float, threads: int, log_dir: Path
) -> list[str]:
    """``imgpipe serve`` as deployed, feature log on, quiet."""
    return [
        sys.executable,
        "-m",
        "imgpipe.cli",
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
        "--batch-window-ms",
        str(batch_window_ms),
        "--threads",
        str(threads),
        "--feature-log",
        str(log_dir / "requests.jsonl"),
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def _onnxruntime_images_per_second(
    classifier: Any, images: np.ndarray, seconds: float = 3
) -> float:
    classifier.run(images, batch_size=len(images))  # warm-up
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or done == 0:
        classifier.run(images, batch_size=len(images))
        done += len(images)
    return done / elapsed


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until_up(url: str, server: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ImgpipeError(f"imgpipe serve exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:  # not listening yet
            pass
        time.sleep(0.2)
    raise ImgpipeError(f"imgpipe serve did not answer {url}/health within {timeout:.0f} s")


async def _load(url: str, payloads: list[bytes], clients: int, requests: int) -> dict[str, Any]:
    """``requests`` one-image POSTs shared by ``clients`` concurrent loops, after a warm-up.

    The client is aiohttp: with httpx the client itself topped out (about 290 req/s at 32
    connections, against 1,360 for aiohttp on the same server).
    """
    import aiohttp

    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, connector=connector) as http:

        async def client(index: int, count: int, record: bool) -> None:
            nonlocal errors
            for sent in range(count):
                form = aiohttp.FormData()
                form.add_field(
                    "files",
                    payloads[(index + sent) % len(payloads)],
                    filename="bench.png",
                    content_type="image/png",
                )
                started = time.perf_counter()
                try:
                    async with http.post("/predict", data=form) as response:
                        await response.read()
                        failed = response.status != 200
                except aiohttp.ClientError:
                    failed = True
                if record:
                    latencies.append(time.perf_counter() - started)
                    errors += failed

        await asyncio.gather(*(client(i, 2, record=False) for i in range(clients)))  # connect
        share = -(-requests // clients)
        started = time.perf_counter()
        await asyncio.gather(*(client(i, share, record=True) for i in range(clients)))
        elapsed = time.perf_counter() - started
    milliseconds = np.array(latencies) * 1000
    return {
        "concurrency": clients,
        "requests": len(latencies),
        "errors": errors,
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "latency_ms": {
            f"p{q}": round(float(np.percentile(milliseconds, q)), 2) for q in (50, 95, 99)
        },
    }
