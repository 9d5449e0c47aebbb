"""``python -m bench features``: the frozen features of ``finetune: head`` and ``lp-ft``
through onnxruntime (what the CPU uses) against torch eager (the baseline), images/s, and the
one-off export that onnxruntime pays first."""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from bench.common import Clock, Commands, add_output_argument, emit, synthetic_split

NAME = "features"


def add_parser(benches: Commands) -> None:
    """Register the command on ``benches`` (an ``add_subparsers`` result)."""
    sub = benches.add_parser(
        NAME,
        help="frozen features through onnxruntime against torch eager: images/s, the export's "
        "one-off seconds, and the images from which onnxruntime is ahead",
    )
    sub.add_argument("--architecture", default="resnet18", help="timm model (random weights)")
    sub.add_argument("--image-size", type=int, default=224, help="input side (RGB)")
    sub.add_argument("--images", type=int, default=256, help="images per round")
    sub.add_argument("--rounds", type=int, default=3, help="interleaved rounds; median")
    add_output_argument(sub)
    sub.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    emit(
        bench_features(
            args.architecture, image_size=args.image_size, images=args.images, rounds=args.rounds
        ),
        args.output,
    )


def bench_features(
    architecture: str,
    *,
    image_size: int,
    images: int,
    rounds: int = 3,
    channels: int = 3,
    clock: Clock = time.perf_counter,
) -> dict[str, Any]:
    """The same images through :class:`~imgpipe.training.feature_cache.FrozenBackbone`
    (onnxruntime) and :func:`~imgpipe.training.feature_cache.embed` (torch eager), in
    interleaved rounds after the export (timed alone) and one untimed warm-up batch each."""
    import torch

    from imgpipe.training.feature_cache import FrozenBackbone, embed
    from imgpipe.training.model import Classifier, create_network

    cpu = torch.device("cpu")
    pixels = synthetic_split(np.random.default_rng(0), images, image_size, channels, 10).images
    torch.manual_seed(0)
    network = Classifier(
        create_network(architecture, 10, channels), [0.5] * channels, [0.25] * channels
    )
    backbone = FrozenBackbone(network, cpu)
    started = clock()
    backbone.features(pixels[:2], "export")
    export = clock() - started
    embed(network, pixels[:2], cpu, description="warm-up")
    eager, onnxruntime = [], []
    for _ in range(rounds):
        started = clock()
        embed(network, pixels, cpu, description="torch eager")
        eager.append(images / (clock() - started))
        started = clock()
        backbone.features(pixels, "onnxruntime")
        onnxruntime.append(images / (clock() - started))
    ratios = [o / e for o, e in zip(onnxruntime, eager, strict=True)]
    eager_rate, ort_rate = float(np.median(eager)), float(np.median(onnxruntime))
    saved_per_image = 1 / eager_rate - 1 / ort_rate
    return {
        "architecture": architecture,
        "input": [channels, image_size, image_size],
        "images": images,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "export_seconds": round(export, 2),
        "torch_eager_images_per_second": round(eager_rate, 1),
        "onnxruntime_images_per_second": round(ort_rate, 1),
        "ratio_per_round": [round(r, 2) for r in ratios],
        "ratio": round(float(np.median(ratios)), 2),
        # From how many images the export has paid for itself (None: it never does).
        "break_even_images": round(export / saved_per_image) if saved_per_image > 0 else None,
    }
