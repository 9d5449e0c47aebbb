"""The CUDA path (bf16 autocast, channels_last, NCCL-free single GPU): run wherever a GPU is
present (`./run.sh test` selects these; without CUDA they skip)."""

from __future__ import annotations

import pytest
import torch

from imgpipe.distributed import Processes
from imgpipe.inference import predict_split, resolve_device
from imgpipe.train import build_trainer, train_classifier
from tests.conftest import make_split, train_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_training_on_cuda_uses_channels_last_and_learns() -> None:
    train, val = make_split(24, seed=1), make_split(8, seed=2)
    config = train_config(device="cuda")
    trainer = build_trainer(config, train, Processes())
    weight = next(p for p in trainer.model.parameters() if p.dim() == 4)
    assert weight.is_cuda and weight.is_contiguous(memory_format=torch.channels_last)
    result = train_classifier(train, val, config)
    assert result.best["val_accuracy"] >= 0.9
    assert next(result.model.parameters()).device.type == "cpu"  # saved from the CPU


def test_bf16_inference_on_cuda_agrees_with_the_cpu() -> None:
    train, val = make_split(24, seed=1), make_split(40, seed=3)
    model = train_classifier(train, make_split(8, seed=2), train_config(device="cpu")).model
    on_cpu = predict_split(model, val, 16, torch.device("cpu"))
    cuda = resolve_device("auto")
    assert cuda.type == "cuda"
    on_gpu = predict_split(model.to(cuda), val, 16, cuda)
    assert (on_gpu.argmax(1) == on_cpu.argmax(1)).float().mean() >= 0.95
    assert (on_gpu - on_cpu).abs().max() < 0.05  # bf16 autocast: close, not equal
