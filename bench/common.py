"""What the benchmarks share: timing, peak memory, synthetic data and printing the figures."""

from __future__ import annotations

import argparse
import io
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import psutil
from PIL import Image
from tqdm import tqdm

from imgpipe.data.samples import Sample
from imgpipe.data.splits import SplitArrays

log = logging.getLogger("bench")

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``add_subparsers`` returns: each benchmark module adds its command to it."""

Clock = Callable[[], float]
"""Seconds from an arbitrary origin: ``time.perf_counter``, or a fake one in tests."""


def add_output_argument(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--output", type=Path, help="also write the figures to this JSON file")


def emit(results: dict[str, Any], output: Path | None) -> None:
    """Print a benchmark's figures as JSON, and keep them in ``output`` when given."""
    from imgpipe.io import write_json

    print(json.dumps(results, indent=2))
    if output:
        write_json(output, results)


class PeakMemory:
    """Peak resident memory of this process and all its children together, sampled."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            time.sleep(self.interval)


def timed(action: Callable[[], Any], clock: Clock = time.perf_counter) -> tuple[float, int]:
    """Seconds taken by ``action`` and the peak memory of the process tree meanwhile."""
    with PeakMemory() as memory:
        started = clock()
        action()
        seconds = clock() - started
    return seconds, memory.peak


def make_jpeg_folder(root: Path, count: int, size: int, classes: int = 4, seed: int = 0) -> None:
    """``count`` random RGB JPEGs of ``size`` x ``size`` in ``classes`` class folders."""
    rng = np.random.default_rng(seed)
    # Smooth random images: compress like photos rather than like noise.
    for index in tqdm(range(count), desc="synthesise jpegs", unit="img"):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
        folder = root / f"class{index % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:06d}.jpg", quality=90)


def jpeg_samples(folder: Path, count: int, size: int) -> tuple[list[str], list[Sample]]:
    """The classes and samples of ``count`` synthetic JPEGs in ``folder`` (made when empty)."""
    if not any(folder.glob("*/*.jpg")):
        make_jpeg_folder(folder, count, size)
    files = sorted(folder.glob("*/*.jpg"))[:count]
    classes = sorted({f.parent.name for f in files})
    return classes, [Sample(f.relative_to(folder), classes.index(f.parent.name)) for f in files]


def add_jpeg_arguments(sub: argparse.ArgumentParser, *, workers: str) -> None:
    """The options of the benchmarks that decode a folder of synthetic JPEGs."""
    sub.add_argument("--images", type=int, default=20_000, help="synthetic JPEGs to decode")
    sub.add_argument("--size", type=int, default=256, help="side of the synthetic JPEGs")
    sub.add_argument("--target", type=int, default=224, help="side to resize to")
    sub.add_argument("--workers", type=int, default=0, help=workers)
    sub.add_argument("--folder", type=Path, help="reuse/keep the synthetic JPEGs here")
    add_output_argument(sub)


def run_jpeg_bench(
    args: argparse.Namespace, run: Callable[..., dict[str, Any]], **extra: Any
) -> None:
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
    emit(results, args.output)


def synthetic_split(
    rng: np.random.Generator, count: int, image_size: int, channels: int, classes: int
) -> SplitArrays:
    """``count`` uniform-noise uint8 images with random labels among ``classes``."""
    pixels = rng.integers(0, 256, (count, image_size, image_size, channels), dtype=np.uint8)
    labels = rng.integers(0, classes, count).astype(np.int64)
    names = [str(i) for i in range(classes)]
    return SplitArrays(pixels, labels, names, [f"{i}.png" for i in range(count)])


def png(image: np.ndarray) -> bytes:
    """``image`` (height x width x channels, uint8) encoded as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[-1] == 1 else image).save(buffer, "PNG")
    return buffer.getvalue()


def export_random_model(
    destination: Path, architecture: str, image_size: int, channels: int, classes: int = 10
) -> Path:
    """A randomly initialised timm model exported as the pipeline would: for benchmarks of
    models the pipeline has not trained (throughput does not depend on the weights)."""
    import torch

    from imgpipe.export.onnx import export_onnx
    from imgpipe.training.model import Classifier, ModelMeta, create_network

    torch.manual_seed(0)
    net = create_network(architecture, num_classes=classes, channels=channels)
    half = [0.5] * channels
    model = Classifier(net, half, half).eval()
    meta = ModelMeta(
        architecture, [str(i) for i in range(classes)], image_size, channels, half, half
    )
    export_onnx(model, meta, destination, opset=18, provenance={})
    return destination


def model_to_bench(
    model: Path, architecture: str | None, image_size: int, channels: int, scratch: Path
) -> Path:
    """``model``, or with ``architecture`` a randomly initialised one of that name exported into
    ``scratch`` (the ``--model`` / ``--architecture`` choice of the predict and serve benches)."""
    if not architecture:
        return model
    return export_random_model(scratch / "model.onnx", architecture, image_size, channels)
