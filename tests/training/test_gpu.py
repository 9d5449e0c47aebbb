"""The CUDA path (bf16 or fp16 autocast, channels_last, one GPU): run wherever a GPU is present
(`./run.sh test` selects these, and the gpu-repro workflow runs `pytest -m gpu`). Without CUDA
they skip, except where IMGPIPE_REQUIRE_CUDA is set: there a missing GPU fails them."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from imgpipe.data.splits import SplitArrays
from imgpipe.training.distributed import Processes
from imgpipe.training.inference import (
    REQUIRE_CUDA_VARIABLE,
    autocast_dtype,
    predict_split,
    resolve_device,
)
from imgpipe.training.loop import build_trainer, train_classifier
from tests.conftest import make_split, train_config

REQUIRED = os.environ.get(REQUIRE_CUDA_VARIABLE, "0") not in ("", "0")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() and not REQUIRED, reason="needs CUDA"),
]


def in_colour(split: SplitArrays) -> SplitArrays:
    """The pattern images as 3-channel images, so that convolutions see several input
    channels (a 1-channel stem is channels-last and contiguous alike)."""
    return SplitArrays(
        np.repeat(split.images, 3, axis=-1), split.labels, split.classes, split.files
    )


def test_cuda_is_reachable_when_required() -> None:
    device = resolve_device("auto")
    assert device.type == "cuda", "IMGPIPE_REQUIRE_CUDA is set but torch sees no GPU"
    print(
        f"GPU: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, autocast {autocast_dtype(device)}"
    )


def test_training_on_cuda_uses_channels_last_and_learns() -> None:
    train, val = in_colour(make_split(24, seed=1)), in_colour(make_split(8, seed=2))
    config = train_config(device="cuda")
    trainer = build_trainer(config, train, val, Processes())
    weights = [p for p in trainer.model.parameters() if p.dim() == 4 and p.shape[1] > 1]
    assert weights and all(w.is_cuda for w in weights)
    for weight in weights:  # channels-last and no longer plainly contiguous
        assert weight.is_contiguous(memory_format=torch.channels_last)
        assert not weight.is_contiguous()
    result = train_classifier(train, val, config)
    assert result.kept["val_accuracy"] >= 0.9
    assert next(result.model.parameters()).device.type == "cpu"  # saved from the CPU


def test_reduced_precision_inference_on_cuda_agrees_with_the_cpu() -> None:
    train, val = make_split(24, seed=1), make_split(40, seed=3)
    model = train_classifier(train, make_split(8, seed=2), train_config(device="cpu")).model
    on_cpu = predict_split(model, val, 16, torch.device("cpu"))
    cuda = resolve_device("auto")
    assert cuda.type == "cuda"
    on_gpu = predict_split(model.to(cuda), val, 16, cuda)
    assert (on_gpu.argmax(1) == on_cpu.argmax(1)).float().mean() >= 0.95
    assert (on_gpu - on_cpu).abs().max() < 0.05  # bf16/fp16 autocast: close, not equal


def test_two_cuda_runs_agree_within_the_reproduction_tolerance() -> None:
    """The promise for GPUs: not bit-identical, but the same within check-metrics' tolerance."""
    train, val = in_colour(make_split(24, seed=1)), in_colour(make_split(8, seed=2))
    config = train_config(device="cuda")
    first, second = (train_classifier(train, val, config) for _ in range(2))
    assert abs(first.kept["val_accuracy"] - second.kept["val_accuracy"]) <= 0.01 + 1 / len(val)
