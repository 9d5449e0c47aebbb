"""The frozen features: onnxruntime on the CPU, the same features as torch eager, bit-identical
when computed again, and torch when the exporter cannot take the network."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from imgpipe.training import feature_cache
from imgpipe.training.feature_cache import FrozenBackbone, cache_key, embed
from imgpipe.training.model import Classifier, create_network
from tests.conftest import make_split, train_config

CPU = torch.device("cpu")


def network(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(create_network("test_resnet", 3, 1), [0.5], [0.25]).eval()


def test_onnxruntime_features_are_torch_eager_s(caplog: pytest.LogCaptureFixture) -> None:
    images = make_split(40).images  # 80 images: a full batch and a partial one
    with caplog.at_level(logging.INFO):
        ours = FrozenBackbone(network(), CPU).features(images)
    assert any("onnxruntime" in r.getMessage() for r in caplog.records)
    eager = embed(network(), images, CPU)
    assert ours.dtype == np.float32 and ours.shape == eager.shape
    np.testing.assert_allclose(ours, eager, atol=1e-4, rtol=1e-4)
    assert not np.array_equal(ours, eager)  # another engine did compute them
    again = FrozenBackbone(network(), CPU).features(images)
    assert np.array_equal(ours, again)  # computed afresh: bit for bit


def test_a_network_the_exporter_refuses_falls_back_to_torch(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    images = make_split(4).images
    backbone = FrozenBackbone(network(), CPU)
    with caplog.at_level(logging.WARNING):
        features = backbone.features(images)
        backbone.features(images)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "frozen features: ONNX export failed (unsupported operator); torch computes them"
    ]
    assert np.array_equal(features, embed(network(), images, CPU))


def test_the_engine_is_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    config, split = train_config(), make_split(2)
    onnxruntime = cache_key(config, split, split, CPU)
    monkeypatch.setattr(feature_cache, "engine", lambda device: "torch")
    assert cache_key(config, split, split, CPU) != onnxruntime
