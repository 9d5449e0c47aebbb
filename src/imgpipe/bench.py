"""Benchmarks that print ratios against a baseline measured in the same run (shared, noisy
machines make absolute timings meaningless across runs)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image
from tqdm import tqdm

from imgpipe.preprocess import Sample, worker_count, write_split

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
    if not any(folder.glob("*/*.jpg")):
        make_jpeg_folder(folder, count, size)
    files = sorted(folder.glob("*/*.jpg"))[:count]
    classes = sorted({f.parent.name for f in files})
    samples = [Sample(f.relative_to(folder), classes.index(f.parent.name)) for f in files]
    workers = worker_count(workers)
    results: dict[str, Any] = {"images": len(samples), "source_size": size, "target_size": target}
    for name, processes in (("one_worker", 1), ("all_workers", workers)):
        run = partial(
            write_split, folder, samples, classes, out / name,
            image_size=target, channels=3, workers=processes,
        )  # fmt: skip
        seconds, peak = timed(run)
        array_bytes = (out / name / "images.npy").stat().st_size
        results[name] = {
            "workers": processes,
            "seconds": round(seconds, 2),
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
