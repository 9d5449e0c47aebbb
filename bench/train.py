"""``python -m bench train``: the train stage's images/s against a bare PyTorch loop (same model,
batch and threads), for the params.yaml model and for resnet18 at 3x224x224, on synthetic data."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bench.common import Clock, Commands, add_output_argument, emit, log, synthetic_split
from imgpipe.data.splits import SplitArrays
from imgpipe.training.settings import TrainConfig

NAME = "train"
STRONG_RECIPE = {"augment": {"policy": "randaugment"}, "mixup": 0.2}  # the photo recipe's
CONFIGURATIONS = ["default", "default+randaugment+mixup", "resnet18", "resnet18+randaugment+mixup"]


def add_parser(benches: Commands) -> None:
    """Register the command on ``benches`` (an ``add_subparsers`` result)."""
    sub = benches.add_parser(
        NAME,
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
        choices=CONFIGURATIONS,
        help="run one configuration only (repeatable)",
    )
    add_output_argument(sub)
    sub.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Each configuration of ``--only`` (all by default) in turn."""
    from imgpipe.params import load_params

    p = load_params(args.params)
    default = (p.model, p.preprocess.image_size, p.preprocess.channels, p.batch_size)
    resnet = ("resnet18", 224, 3, args.resnet_batch_size)
    configurations = {
        "default": (*default, {}),
        "default+randaugment+mixup": (*default, STRONG_RECIPE),
        "resnet18": (*resnet, {}),
        "resnet18+randaugment+mixup": (*resnet, STRONG_RECIPE),
    }
    results = {}
    for name, (architecture, size, channels, batch_size, recipe) in configurations.items():
        if args.only and name not in args.only:
            continue
        config = p.training().replace(
            model=architecture, batch_size=batch_size, epochs=args.epochs, warmup_epochs=0, **recipe
        )
        results[name] = bench_train(
            config,
            image_size=size,
            channels=channels,
            rounds=args.rounds,
            images=args.images if name.startswith("default") else args.resnet_images,
        )
        log.info("%s: %s", name, results[name])
    emit(results, args.output)


def bench_train(
    config: TrainConfig,
    *,
    image_size: int,
    channels: int,
    images: int,
    rounds: int = 3,
    classes: int = 10,
    clock: Clock = time.perf_counter,
) -> dict[str, Any]:
    """The train stage's throughput against a bare PyTorch loop, same model/batch/threads
    and memory layout (channels-last).

    Both train a randomly initialised ``config.model`` on the same synthetic uint8 images on
    the CPU for ``config.epochs``, each side's time counting the building of its model. The bare
    loop is forward, cross-entropy, backward, AdamW step over tensors already in memory; the
    stage's loop (:func:`~imgpipe.training.loop.train_classifier` with ``config``) also gathers
    batches from the arrays, augments every image, keeps the weight average, steps the schedule
    and validates after each epoch (on a split a tenth the size of the training one, as in the
    default pipeline).

    The bare loop trains on the images augmented once beforehand (untimed): CPU convolution
    speed depends on the pixel values (uniform noise trained ~30% faster than the same noise
    after a bilinear warp), so both loops must see alike images for the ratio to measure the
    stage's overhead rather than the data.
    """
    import torch

    from imgpipe.training.loop import train_classifier

    config = config.replace(
        device="cpu", processes=1, compile=False, early_stopping=0, pretrained=False
    )
    rng = np.random.default_rng(0)
    train = synthetic_split(rng, images, image_size, channels, classes)
    val = synthetic_split(rng, max(1, images // 10), image_size, channels, classes)
    work = images * config.epochs
    # Interleaved rounds of equal work: a shared machine's slow spells hit both sides of a
    # round alike, so each round's ratio is fair; the median of those is the headline.
    bare, stage = [], []
    for _ in tqdm(range(rounds), desc=f"bench train {config.model}", unit="round"):
        bare.append(work / _bare_loop(train, config, channels, classes, clock))
        started = clock()
        train_classifier(train, val, config)
        stage.append(work / (clock() - started))
    return {
        "architecture": config.model,
        "input": [channels, image_size, image_size],
        "images": images,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        **_summary(bare, stage),
    }


def _bare_loop(
    train: SplitArrays, config: TrainConfig, channels: int, classes: int, clock: Clock
) -> float:
    """Seconds of building the model, then forward, cross-entropy, backward and AdamW step
    over ``config.epochs``."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    from imgpipe.training.augment import build_augmentation
    from imgpipe.training.model import Classifier, create_network

    torch.manual_seed(0)
    # Building the model is timed on both sides: train_classifier builds its own.
    building = clock()
    network = create_network(config.model, classes, channels)
    model = Classifier(network, [0.5] * channels, [0.25] * channels).train()
    model.to(memory_format=torch.channels_last)  # as the stage trains on the CPU
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    built = clock() - building
    tensors = torch.from_numpy(train.images).permute(0, 3, 1, 2).contiguous()
    augment = build_augmentation(config.augment, channels)
    if augment is not None:  # augmented once, untimed: see bench_train's docstring
        tensors = torch.cat([augment(tensors[i : i + 256]) for i in range(0, len(tensors), 256)])
    targets = torch.from_numpy(train.labels)
    size = config.batch_size
    started = clock()
    for _ in range(config.epochs):
        for start in range(0, len(tensors), size):
            loss = F.cross_entropy(
                model(tensors[start : start + size]), targets[start : start + size]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    return built + clock() - started


def _summary(bare: list[float], stage: list[float]) -> dict[str, Any]:
    """Each round's images/s and stage-over-bare ratio, and their medians."""
    ratios = [s / b for s, b in zip(stage, bare, strict=True)]
    return {
        "bare_loop_per_round": [round(b, 1) for b in bare],
        "train_stage_per_round": [round(s, 1) for s in stage],
        "ratio_per_round": [round(r, 3) for r in ratios],
        "bare_loop_images_per_second": round(float(np.median(bare)), 1),
        "train_stage_images_per_second": round(float(np.median(stage)), 1),
        "ratio": round(float(np.median(ratios)), 3),
        "ratio_spread": [round(min(ratios), 3), round(max(ratios), 3)],
    }
