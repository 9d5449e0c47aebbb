"""The frozen features: onnxruntime on the CPU, the same features as torch eager, bit-identical
when computed again, and torch when the exporter cannot take the network; each split's entry
keyed by the backbone and the pixels, and read back by calibrate and evaluate for a head model."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from imgpipe.training import feature_cache
from imgpipe.training.feature_cache import FrozenBackbone, cache_key, embed, model_logits
from imgpipe.training.inference import predict_logits
from imgpipe.training.model import Classifier, ModelMeta, create_network
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
        raise torch.onnx.OnnxExporterError("unsupported operator")

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


def test_an_error_that_is_not_the_exporters_refusal_is_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("export() missing 1 required positional argument")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(TypeError, match="missing 1 required"):
        FrozenBackbone(network(), CPU).features(make_split(4).images)


def test_the_engine_is_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    config, split = train_config(), make_split(2)
    onnxruntime = cache_key(config, split, split, CPU)
    monkeypatch.setattr(feature_cache, "engine", lambda device: "torch")
    assert cache_key(config, split, split, CPU) != onnxruntime


def test_a_splits_entry_is_keyed_by_the_backbone_and_the_pixels_not_the_classifier() -> None:
    images = make_split(3).images
    key = FrozenBackbone(network(), CPU).key(images)
    assert FrozenBackbone(network(), CPU).key(images) == key
    retrained_head = network()
    with torch.no_grad():
        retrained_head.net.get_classifier().weight.add_(1.0)
    assert FrozenBackbone(retrained_head, CPU).key(images) == key
    fine_tuned = network()
    with torch.no_grad():
        next(fine_tuned.net.parameters()).add_(1e-3)
    assert FrozenBackbone(fine_tuned, CPU).key(images) != key
    one_pixel = images.copy()
    one_pixel[0, 0, 0, 0] ^= 1
    assert FrozenBackbone(network(), CPU).key(one_pixel) != key


def meta(finetune: str) -> ModelMeta:
    return ModelMeta("test_resnet", ["a", "b", "c"], 32, 1, [0.5], [0.25], {"finetune": finetune})


def test_a_head_models_logits_are_its_classifier_on_the_cached_features(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    split, cache = make_split(20), tmp_path / "features"
    eager = predict_logits(network(), split, 16, CPU).numpy()
    computed = model_logits(network(), meta("head"), split, 16, CPU, cache=cache)
    [entry] = cache.glob("split-*.npz")
    [_graph] = cache.glob("graph-*.onnx")  # the exported backbone, kept for export-onnx
    np.testing.assert_allclose(computed, eager, atol=1e-4, rtol=1e-4)
    with caplog.at_level(logging.INFO):
        read = model_logits(network(), meta("head"), split, 16, CPU, cache=cache)
    assert any("from" in r.getMessage() and entry.name in r.getMessage() for r in caplog.records)
    assert np.array_equal(read, computed)  # whether the entry was there changes nothing
    # Any other model runs whole, whatever the cache holds.
    whole = model_logits(network(), meta("full"), split, 16, CPU, cache=cache)
    assert np.array_equal(whole, eager) and sorted(cache.glob("*.npz")) == [entry]
