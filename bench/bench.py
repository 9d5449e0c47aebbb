"""The benchmarks behind ``python -m bench``: each prints ratios against a baseline measured in
the same run (shared, noisy machines make absolute timings meaningless across runs)."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image
from tqdm import tqdm

from imgpipe.data.preprocess import Sample, worker_count, write_split
from imgpipe.errors import ImgpipeError
from imgpipe.training.settings import TrainConfig

log = logging.getLogger(__name__)


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


def timed(action: Callable[[], Any]) -> tuple[float, int]:
    """Seconds taken by ``action`` and the peak memory of the process tree meanwhile."""
    with PeakMemory() as memory:
        started = time.perf_counter()
        action()
        seconds = time.perf_counter() - started
    return seconds, memory.peak


def jpeg_samples(folder: Path, count: int, size: int) -> tuple[list[str], list[Sample]]:
    """The classes and samples of ``count`` synthetic JPEGs in ``folder`` (made when empty)."""
    if not any(folder.glob("*/*.jpg")):
        make_jpeg_folder(folder, count, size)
    files = sorted(folder.glob("*/*.jpg"))[:count]
    classes = sorted({f.parent.name for f in files})
    return classes, [Sample(f.relative_to(folder), classes.index(f.parent.name)) for f in files]


def bench_preprocess(
    folder: Path, out: Path, *, count: int, size: int, target: int, workers: int
) -> dict[str, Any]:
    """Throughput of preprocess on ``workers`` processes against one worker, and peak memory
    against the size of the arrays written.

    Args:
        folder: where the synthetic JPEGs are (created when empty).
        out: scratch folder for the arrays.
        count: number of images.
        size: side of the synthetic JPEGs.
        target: side the images are resized to.
        workers: processes for the parallel run (0 = every core).
    """
    classes, samples = jpeg_samples(folder, count, size)
    workers = worker_count(workers)
    results: dict[str, Any] = {"images": len(samples), "source_size": size, "target_size": target}
    for name, processes in (("one_worker", 1), ("all_workers", workers)):
        run = partial(
            write_split,
            folder,
            samples,
            classes,
            out / name,
            image_size=target,
            channels=3,
            workers=processes,
        )
        seconds, peak = timed(run)
        array_bytes = (out / name / "images.npy").stat().st_size
        results[name] = {
            "workers": processes,
            "seconds": round(seconds, 4),
            "images_per_second": round(len(samples) / seconds, 1),
            "peak_rss_bytes": peak,
            "array_bytes": array_bytes,
            "peak_rss_over_array_size": round(peak / array_bytes, 3),
        }
        log.info("%s: %s", name, results[name])
    results["speedup"] = round(
        results["all_workers"]["images_per_second"] / results["one_worker"]["images_per_second"], 2
    )
    return results


def bench_near_duplicates(
    folder: Path, out: Path, *, count: int, size: int, target: int, workers: int, distance: int
) -> dict[str, Any]:
    """What the near-duplicate search costs: preprocess's decoding with the perceptual hash
    against the same decoding without it, and the all-pairs search over the hashes against the
    decoding time.

    Args:
        folder: where the synthetic JPEGs are (created when empty).
        out: scratch folder for the arrays.
        count, size, target, workers: as for :func:`bench_preprocess`.
        distance: the search's ``preprocess.near_duplicate_distance``.
    """
    from unittest import mock

    from imgpipe.data.near_duplicates import Place, near_duplicate_pairs

    classes, samples = jpeg_samples(folder, count, size)
    workers = worker_count(workers)
    decode = partial(
        write_split, folder, samples, classes, image_size=target, channels=3, workers=workers
    )
    # The workers are forked, so the patched hash reaches them too.
    with mock.patch("imgpipe.data.preprocess.perceptual_hash", lambda pixels: "00" * 32):
        bare, _ = timed(lambda: decode(out / "bare"))
    started = time.perf_counter()
    outcome = decode(out / "hashed")
    hashed = time.perf_counter() - started
    hashes = list(outcome.hashes.values())
    # Alternate splits so that every pair is a candidate, as across train and test.
    places = [Place(str(i % 3), 0, digest) for i, digest in enumerate(outcome.digests.values())]
    started = time.perf_counter()
    pairs = near_duplicate_pairs(hashes, places, distance)
    search = time.perf_counter() - started
    results: dict[str, Any] = {
        "images": len(hashes),
        "target_size": target,
        "workers": workers,
        "max_distance_bits": distance,
        "decode_seconds": round(bare, 3),
        "decode_and_hash_seconds": round(hashed, 3),
        "hash_overhead": round(hashed / bare, 3),
        "search_seconds": round(search, 3),
        "search_over_decode": round(search / bare, 3),
        "pairs_found": len(pairs),
    }
    log.info("%s", results)
    return results


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
    feature log on) and is sent one-image PNG requests by ``c`` concurrent clients for each
    ``c`` in ``concurrency``.
    """
    from imgpipe.runtime.onnx_model import OnnxClassifier

    classifier = OnnxClassifier(model, threads=threads)
    size, channels = classifier.image_size, classifier.channels
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max_batch, size, size, channels), dtype=np.uint8)
    baseline = _onnxruntime_images_per_second(classifier, images)
    del classifier
    payloads = [_png(image) for image in images[:16]]
    results: dict[str, Any] = {
        "model": str(model),
        "image_size": size,
        "onnxruntime_batch": {"batch": max_batch, "images_per_second": round(baseline, 1)},
        "levels": [],
    }
    command = [
        sys.executable,
        "-m",
        "imgpipe.cli",
        "serve",
        "--model",
        str(model),
        "--port",
        str(port := _free_port()),
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
                results["levels"].append(level)
        finally:
            server.terminate()
            server.wait(timeout=30)
    results["best_ratio_to_onnxruntime_batch"] = max(
        level["ratio_to_onnxruntime_batch"] for level in results["levels"]
    )
    return results


def _onnxruntime_images_per_second(
    classifier: Any, images: np.ndarray, seconds: float = 3
) -> float:
    classifier.run(images, batch_size=len(images))  # warm-up
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or done == 0:
        classifier.run(images, batch_size=len(images))
        done += len(images)
    return done / elapsed


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[-1] == 1 else image).save(buffer, "PNG")
    return buffer.getvalue()


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


def bench_train(
    config: TrainConfig,
    *,
    image_size: int,
    channels: int,
    images: int,
    rounds: int = 3,
    classes: int = 10,
) -> dict[str, Any]:
    """The train stage's throughput against a bare PyTorch loop, same model/batch/threads.

    Both train a randomly initialised ``config.model`` on the same synthetic uint8 images on the CPU
    for ``config.epochs``. The bare loop is forward, cross-entropy, backward, AdamW step over
    tensors already in memory; the stage's loop (:func:`~imgpipe.training.loop.train_classifier`
    with ``config``) also gathers batches from the arrays, augments every image, keeps the weight
    average, steps the schedule and validates after each epoch (on a split a tenth the size of the
    training one, as in the default pipeline).

    The bare loop trains on the images augmented once beforehand (untimed): CPU convolution
    speed depends on the pixel values (uniform noise trained ~30% faster than the same noise
    after a bilinear warp), so both loops must see alike images for the ratio to measure the
    stage's overhead rather than the data.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    from imgpipe.data.splits import SplitArrays
    from imgpipe.training.augment import build_augmentation
    from imgpipe.training.loop import train_classifier
    from imgpipe.training.model import Classifier, create_network

    config = config.replace(
        device="cpu", processes=1, compile=False, early_stopping=0, pretrained=False
    )
    architecture, epochs, batch_size = config.model, config.epochs, config.batch_size
    rng = np.random.default_rng(0)

    def split(count: int) -> SplitArrays:
        pixels = rng.integers(0, 256, (count, image_size, image_size, channels), dtype=np.uint8)
        labels = rng.integers(0, classes, count).astype(np.int64)
        names = [str(i) for i in range(classes)]
        return SplitArrays(pixels, labels, names, [f"{i}.png" for i in range(count)])

    train, val = split(images), split(max(1, images // 10))
    results: dict[str, Any] = {
        "architecture": architecture,
        "input": [channels, image_size, image_size],
        "images": images,
        "epochs": epochs,
        "batch_size": batch_size,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
    }

    def bare_loop() -> float:
        torch.manual_seed(0)
        model = Classifier(
            create_network(architecture, classes, channels), [0.5] * channels, [0.25] * channels
        ).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        tensors = torch.from_numpy(train.images).permute(0, 3, 1, 2).contiguous()
        augment = build_augmentation(config.augment, channels)
        if augment is not None:  # augmented once, untimed: see the docstring
            tensors = torch.cat([augment(tensors[i : i + 256]) for i in range(0, images, 256)])
        targets = torch.from_numpy(train.labels)
        started = time.perf_counter()
        for _ in range(epochs):
            for start in range(0, images, batch_size):
                loss = F.cross_entropy(
                    model(tensors[start : start + batch_size]), targets[start : start + batch_size]
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
        return images * epochs / (time.perf_counter() - started)

    def train_stage() -> float:
        started = time.perf_counter()
        train_classifier(train, val, config)
        return images * epochs / (time.perf_counter() - started)

    # Interleaved rounds of equal work: a shared machine's slow spells hit both sides of a
    # round alike, so each round's ratio is fair; the median of those is the headline.
    bare, stage = [], []
    for _ in tqdm(range(rounds), desc=f"bench train {architecture}", unit="round"):
        bare.append(bare_loop())
        stage.append(train_stage())
    ratios = [s / b for s, b in zip(stage, bare, strict=True)]
    results["bare_loop_per_round"] = [round(b, 1) for b in bare]
    results["train_stage_per_round"] = [round(s, 1) for s in stage]
    results["ratio_per_round"] = [round(r, 3) for r in ratios]
    results["bare_loop_images_per_second"] = round(float(np.median(bare)), 1)
    results["train_stage_images_per_second"] = round(float(np.median(stage)), 1)
    results["ratio"] = round(float(np.median(ratios)), 3)
    results["ratio_spread"] = [round(min(ratios), 3), round(max(ratios), 3)]
    return results


HEAD_EPOCHS = 20


def bench_finetune(config: TrainConfig, *, image_size: int, images: int) -> dict[str, Any]:
    """``finetune: head`` against ``full`` on the same synthetic RGB images and settings.

    Each mode trains 1 epoch and then more (full 2, head 21); the difference is the cost of
    epochs alone
    (set-up, first validation and, for ``head``, reading the cache cancel out). The head's
    feature cache is built by a first run, timed on its own.
    """
    import tempfile

    import torch

    from imgpipe.data.splits import SplitArrays
    from imgpipe.training.loop import train_classifier

    rng = np.random.default_rng(0)
    classes = 10

    def split(count: int) -> SplitArrays:
        pixels = rng.integers(0, 256, (count, image_size, image_size, 3), dtype=np.uint8)
        labels = rng.integers(0, classes, count).astype(np.int64)
        return SplitArrays(
            pixels, labels, [str(i) for i in range(classes)], [f"{i}.png" for i in range(count)]
        )

    train, val = split(images), split(max(1, images // 10))
    config = config.replace(
        device="cpu",
        processes=1,
        compile=False,
        early_stopping=0,
        pretrained=False,
        freeze="none",
        freeze_epochs=0,
    )
    results: dict[str, Any] = {
        "architecture": config.model,
        "input": [3, image_size, image_size],
        "images": images,
        "threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-features-") as cache:

        def seconds(finetune: str, epochs: int) -> float:
            started = time.perf_counter()
            train_classifier(
                train,
                val,
                config.replace(finetune=finetune, epochs=epochs),
                feature_cache=Path(cache),
            )
            return time.perf_counter() - started

        first = seconds("head", 1)  # builds the cache
        # A head epoch takes milliseconds: 20 of them, so the difference stands out of noise.
        head = [seconds("head", 1), seconds("head", 1 + HEAD_EPOCHS)]
        full = [seconds("full", 1), seconds("full", 2)]
    head_epoch, full_epoch = (head[1] - head[0]) / HEAD_EPOCHS, full[1] - full[0]
    results["cache_build_seconds"] = round(first - head[0], 4)
    results["head_seconds_per_epoch"] = round(head_epoch, 6)
    results["full_seconds_per_epoch"] = round(full_epoch, 4)
    results["speedup_per_epoch"] = round(full_epoch / max(head_epoch, 1e-6), 1)
    return results


def bench_predict(model: Path, folder: Path, *, count: int) -> dict[str, Any]:
    """``imgpipe predict`` on ``count`` PNGs (written once into ``folder``) into a CSV, against
    onnxruntime alone on the same images already decoded, in batches of the same size."""
    from imgpipe.runtime.classify import DecodePolicy
    from imgpipe.runtime.onnx_model import OnnxClassifier
    from imgpipe.runtime.predictions import BATCH, find_inputs, predict_files, write_predictions

    classifier = OnnxClassifier(model)
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    shape = (classifier.image_size, classifier.image_size, classifier.channels)
    for index in range(count - len(list(folder.glob("*.png")))):
        (folder / f"{index:06d}.png").write_bytes(_png(rng.integers(0, 256, shape, np.uint8)))
    files = find_inputs([folder])[:count]
    decoded = np.stack([DecodePolicy().decode(f, classifier) for f in files])
    started = time.perf_counter()
    classifier.run(decoded, BATCH)
    bare = len(files) / (time.perf_counter() - started)
    started = time.perf_counter()
    predictions = predict_files(classifier, files, policy=DecodePolicy(), top_k=3)
    write_predictions(
        predictions, folder.parent / "predictions.csv", top_k=3, embedding_dims=0, stream=sys.stdout
    )
    served = len(files) / (time.perf_counter() - started)
    return {
        "model": str(model),
        "images": len(files),
        "input": list(shape),
        "onnxruntime_images_per_second": round(bare, 1),
        "predict_images_per_second": round(served, 1),
        "ratio": round(served / bare, 3),
    }
