from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from imgpipe.export import ParityError, check_parity
from imgpipe.model import Classifier, ModelMeta
from imgpipe.runtime import OnnxClassifier, read_onnx_metadata
from tests.conftest import make_split


@pytest.fixture(scope="module")
def exported(tiny_onnx: Path) -> Path:
    return tiny_onnx


def test_one_file_with_dynamic_batch_and_metadata(
    exported: Path, tiny_model: tuple[Classifier, ModelMeta]
) -> None:
    model, meta = tiny_model
    assert [p.name for p in exported.parent.iterdir()] == ["model.onnx"]  # no external data
    graph = onnx.load(exported).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert not graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")  # symbolic batch
    assert read_onnx_metadata(exported) == {**meta.to_dict(), "checkpoint_sha256": "c0ffee"}

    images = make_split(5).images
    report = check_parity(exported, model, images, tolerance=1e-4)
    assert report.images == 10
    assert report.prediction_agreement == 1.0
    assert report.max_abs_diff_logits < 1e-4


def test_parity_gate_fails_when_outputs_differ(
    exported: Path, tiny_model: tuple[Classifier, ModelMeta]
) -> None:
    model, _ = tiny_model
    changed = Classifier(model.net, [0.5], [0.25])  # torch side now normalises differently
    with pytest.raises(ParityError, match=r"above export\.tolerance"):
        check_parity(exported, changed, make_split(3).images, tolerance=1e-4)


def test_onnx_classifier_matches_torch(
    exported: Path, tiny_model: tuple[Classifier, ModelMeta]
) -> None:
    model, _ = tiny_model
    images = make_split(4).images
    probabilities, embeddings = OnnxClassifier(exported).run(images, batch_size=3)
    with torch.no_grad():
        expected = model(torch.from_numpy(images).permute(0, 3, 1, 2)).softmax(1).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert embeddings.shape[0] == 8
