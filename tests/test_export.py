from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from imgpipe.export import ParityError, check_parity
from imgpipe.model import Classifier, ModelMeta
from imgpipe.runtime import OnnxClassifier, read_onnx_metadata
from tests.conftest import REPO_ROOT, make_split


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


def test_the_stage_keeps_a_model_that_fails_parity_away_from_its_output(
    tiny_model: tuple[Classifier, ModelMeta],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """stages/export_onnx.py with a tolerance no export meets: exit 1 naming the tolerance,
    and neither the ONNX file, nor a temporary one, nor the metrics are left behind."""
    from imgpipe.model import save_checkpoint
    from imgpipe.splits import write_labels_and_meta
    from tests.test_cli import run_stage_script

    model, meta = tiny_model
    save_checkpoint(tmp_path / "model.pt", model, meta)
    val = make_split(4)
    (tmp_path / "val").mkdir()
    np.save(tmp_path / "val" / "images.npy", val.images)
    write_labels_and_meta(tmp_path / "val", val.labels.tolist(), val.classes, val.files)
    params = (
        (REPO_ROOT / "params.yaml").read_text().replace("tolerance: 0.0001", "tolerance: 1e-30")
    )
    (tmp_path / "params.yaml").write_text(params)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    with pytest.raises(SystemExit) as done:
        run_stage_script("export_onnx.py", "--model", "model.pt", "--val", "val",
                         "--out", "out/model.onnx", "--metrics", "out/export.json")  # fmt: skip
    assert done.value.code == 1
    [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "onnxruntime differs from torch by" in error and "above export.tolerance 1e-30" in error
    assert list((tmp_path / "out").iterdir()) == []
