"""The backbone's ONNX graph is exported once and kept: the export of a finetune: head model
reads the graph the features were computed with, and writes the same bytes as without it; the
fingerprint tells apart architectures that share every weight."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from imgpipe.export.onnx import check_parity, export_onnx
from imgpipe.training.backbone_graph import backbone_fingerprint
from imgpipe.training.feature_cache import FrozenBackbone, split_features
from imgpipe.training.model import Classifier, ModelMeta, create_network
from tests.conftest import make_split

CPU = torch.device("cpu")
META = ModelMeta("test_resnet", ["a", "b", "c"], 32, 1, [0.5], [0.25], {"finetune": "head"})


def network(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(create_network("test_resnet", 3, 1), [0.5], [0.25]).eval()


def with_trained_head(model: Classifier) -> Classifier:
    """The same backbone with another classifier, as finetune: head leaves it."""
    with torch.no_grad():
        model.net.get_classifier().weight.mul_(-2.0).add_(0.1)
    return model


def test_a_head_models_export_reads_the_features_graph_and_writes_the_same_bytes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    split, cache = make_split(20), tmp_path / "features"
    split_features(FrozenBackbone(network(), CPU, cache), split, cache)  # what the audit does
    [graph] = cache.glob("graph-*.onnx")
    model = with_trained_head(network())
    with caplog.at_level(logging.INFO):
        export_onnx(model, META, tmp_path / "cached.onnx", 18, {}, temperature=1.5, graphs=cache)
    assert any(f"backbone graph from {graph}" in r.getMessage() for r in caplog.records)
    assert list(cache.glob("graph-*.onnx")) == [graph]  # nothing exported again
    export_onnx(model, META, tmp_path / "fresh.onnx", 18, {}, temperature=1.5)
    cached, fresh = ((tmp_path / f"{n}.onnx").read_bytes() for n in ("cached", "fresh"))
    assert cached == fresh  # whether the graph was there changes no byte
    report = check_parity(tmp_path / "cached.onnx", model, split.images, 1e-4, temperature=1.5)
    assert report.prediction_agreement == 1.0


def test_only_the_same_backbone_and_opset_find_the_graph(tmp_path: Path) -> None:
    split, cache = make_split(2), tmp_path / "features"
    export_onnx(network(), META, tmp_path / "a.onnx", 18, {}, graphs=cache)
    assert not cache.exists()  # export-onnx keeps no graph: no later stage reads one
    split_features(FrozenBackbone(network(), CPU, cache), split, cache)
    split_features(FrozenBackbone(with_trained_head(network()), CPU, cache), split, cache)
    assert len(list(cache.glob("graph-*.onnx"))) == 1  # the classifier is not in the graph
    split_features(FrozenBackbone(network(seed=1), CPU, cache), split, cache)
    assert len(list(cache.glob("graph-*.onnx"))) == 2
    before = sorted(cache.iterdir())
    export_onnx(network(), META, tmp_path / "b.onnx", 19, {}, graphs=cache)  # another opset
    assert sorted(cache.iterdir()) == before
    assert (tmp_path / "a.onnx").read_bytes() != (tmp_path / "b.onnx").read_bytes()


def test_the_fingerprint_tells_same_padding_from_symmetric_padding_with_the_same_weights() -> None:
    tf_style = Classifier(create_network("tf_efficientnet_lite0", 3, 3), [0.5] * 3, [0.25] * 3)
    pytorch_style = Classifier(create_network("efficientnet_lite0", 3, 3), [0.5] * 3, [0.25] * 3)
    pytorch_style.load_state_dict(tf_style.state_dict())
    assert backbone_fingerprint(tf_style) != backbone_fingerprint(pytorch_style)
    assert backbone_fingerprint(with_trained_head(tf_style)) == backbone_fingerprint(tf_style)


def test_a_model_without_a_linear_classifier_is_exported_whole(tmp_path: Path) -> None:
    model = network()
    model.net.fc = torch.nn.Sequential(torch.nn.Linear(model.net.fc.in_features, 3))
    cache = tmp_path / "features"
    export_onnx(model, replace(META, training={}), tmp_path / "m.onnx", 18, {}, graphs=cache)
    assert not cache.exists()
    images = make_split(4).images
    assert check_parity(tmp_path / "m.onnx", model, images, 1e-4).prediction_agreement == 1.0


def test_the_exporter_sees_the_activations_out_of_place_and_they_are_switched_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = network()
    in_place = [m for m in model.modules() if getattr(m, "inplace", None) is True]
    assert in_place  # timm's ResNet: ReLU(inplace=True)
    seen: list[bool] = []
    real_export = torch.onnx.export

    def spy(module: torch.nn.Module, *args: object, **kwargs: object) -> object:
        seen.extend(getattr(m, "inplace") for m in in_place)  # noqa: B009
        return real_export(module, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.onnx, "export", spy)
    export_onnx(model, META, tmp_path / "model.onnx", 18, {})
    assert seen and not any(seen)  # the exporter traced out-of-place activations
    assert all(getattr(m, "inplace") for m in in_place)  # noqa: B009  # and the network is as it was
