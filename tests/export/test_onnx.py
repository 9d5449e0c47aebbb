import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from imgpipe.export.onnx import PARITY_BATCH, ParityError, check_parity
from imgpipe.runtime.onnx_model import OnnxClassifier, read_onnx_metadata
from imgpipe.training.model import Classifier, ModelMeta
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

    images = make_split(20).images  # 40: one full batch of PARITY_BATCH and part of another
    report = check_parity(exported, model, images, tolerance=1e-4)
    assert report.images == 40 > PARITY_BATCH
    assert report.prediction_agreement == 1.0
    assert report.max_abs_diff_logits < 1e-4


def test_parity_gate_fails_when_outputs_differ(
    exported: Path, tiny_model: tuple[Classifier, ModelMeta]
) -> None:
    model, _ = tiny_model
    changed = Classifier(model.net, [0.5], [0.25])  # torch side now normalises differently
    with pytest.raises(ParityError, match=r"above export\.tolerance"):
        check_parity(exported, changed, make_split(3).images, tolerance=1e-4)


def test_parity_is_measured_against_each_outputs_scale(
    exported: Path, tiny_model: tuple[Classifier, ModelMeta], tmp_path: Path
) -> None:
    """Logits 2,000x larger (a temperature of 5e-4) carry 2,000x the rounding: the gate reads
    each difference over its output's largest value, so the same network still passes."""
    from imgpipe.export.onnx import export_onnx

    model, meta = tiny_model
    images = make_split(20).images
    plain = check_parity(exported, model, images, tolerance=1e-4)
    scaled = tmp_path / "model.onnx"
    export_onnx(model, meta, scaled, opset=18, provenance={}, temperature=5e-4)
    report = check_parity(scaled, model, images, tolerance=1e-4, temperature=5e-4)
    assert report.max_abs_diff_logits > 1e-4 > report.max_relative_diff  # absolute would fail
    assert report.max_relative_diff <= 10 * max(plain.max_relative_diff, 1e-7)
    with pytest.raises(ParityError, match=r"of the outputs' scale \(logits by .* \|logit\|"):
        check_parity(
            scaled, model, images, tolerance=report.max_relative_diff / 2, temperature=5e-4
        )


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


# What calibrate would have written: a temperature and an operating point.
FITTED = {
    "method": "temperature",
    "temperature": 1.7,
    "val_ece_uncalibrated": 0.09,
    "val_ece": 0.01,
    "positive_class": "right",
    "threshold": 0.4,
    "target": "sensitivity",
    "target_value": 0.9,
    "val_sensitivity": 0.93,
}


@pytest.fixture
def stage_folder(
    tiny_model: tuple[Classifier, ModelMeta], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A checkpoint, train and val splits and params.yaml, as the export stage finds them."""
    from imgpipe.data.split_writer import write_labels_and_meta
    from imgpipe.training.model import save_checkpoint

    model, meta = tiny_model
    save_checkpoint(tmp_path / "model.pt", model, meta)
    for name, split in (("train", make_split(40, seed=1)), ("val", make_split(30, seed=2))):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "images.npy", split.images)
        write_labels_and_meta(tmp_path / name, split.labels.tolist(), split.classes, split.files)
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    (tmp_path / "calibration.json").write_text(json.dumps(FITTED))
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_export(*changes: tuple[str, str]) -> None:
    from tests.test_cli import run_stage_script

    params = Path("params.yaml")
    for old, new in changes:
        assert old in params.read_text()
        params.write_text(params.read_text().replace(old, new))
    run_stage_script(
        "export_onnx.py",
        "--model",
        "model.pt",
        "--calibration",
        "calibration.json",
        "--val",
        "val",
        "--train",
        "train",
        "--out",
        "out/model.onnx",
        "--int8",
        "out/int8",
        "--metrics",
        "out/export.json",
    )


def test_the_stage_keeps_a_model_that_fails_parity_away_from_its_output(
    stage_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A tolerance no export meets: exit 1 naming the tolerance, and neither the ONNX file,
    nor a temporary one, nor the int8 model, nor the metrics are left behind."""
    with pytest.raises(SystemExit) as done:
        run_export(("tolerance: 0.001", "tolerance: 1e-30"))
    assert done.value.code == 1
    [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "onnxruntime differs from torch by" in error and "above export.tolerance 1e-30" in error
    assert list((stage_folder / "out").iterdir()) == []


def test_the_int8_model_carries_the_metadata_and_agrees_with_fp32(stage_folder: Path) -> None:
    run_export()
    int8, fp32 = stage_folder / "out/int8/model.onnx", stage_folder / "out/model.onnx"
    meta = read_onnx_metadata(int8)
    assert meta["quantization"]["activations"] == "uint8" and meta["classes"] == ["left", "right"]
    assert {k: v for k, v in meta.items() if k != "quantization"} == read_onnx_metadata(fp32)
    ops = {node.op_type for node in onnx.load(int8).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ
    metrics = json.loads((stage_folder / "out/export.json").read_text())
    assert metrics["int8"] == "written" and metrics["int8_calibration_images"] == 80
    assert metrics["int8_top1_agreement"] >= 0.95
    assert metrics["fp32_val_accuracy"] - metrics["int8_val_accuracy"] <= 0.005
    assert abs(metrics["int8_val_ece"] - metrics["fp32_val_ece"]) <= 0.01
    images = make_split(10, seed=3).images
    quantised, full = OnnxClassifier(int8).run(images)[0], OnnxClassifier(fp32).run(images)[0]
    assert np.abs(quantised - full).max() < 0.1


def test_int8_off_leaves_its_folder_empty(stage_folder: Path) -> None:
    run_export(("int8: true", "int8: false"))
    assert list((stage_folder / "out/int8").iterdir()) == []
    assert json.loads((stage_folder / "out/export.json").read_text())["int8"] == "off"


def test_an_int8_model_that_loses_too_much_is_refused_without_failing_the_stage(
    stage_folder: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The real quantisation and scoring, with the int8 accuracy lowered past the gate: the
    stage succeeds, the fp32 model is there, the int8 folder is empty, and both the warning
    and export.json say why."""
    from dataclasses import replace

    import imgpipe.export.quantize

    scored = imgpipe.export.quantize.compare_int8

    def worse(*args: Any, **kwargs: Any) -> imgpipe.export.quantize.Int8Report:
        report = scored(*args, **kwargs)
        return replace(report, int8_accuracy=report.fp32_accuracy - 0.02)

    monkeypatch.setattr(imgpipe.export.quantize, "compare_int8", worse)
    run_export(("int8_max_drop: 0.005", "int8_max_drop: 0.01"))
    assert (stage_folder / "out/model.onnx").is_file()
    assert list((stage_folder / "out/int8").iterdir()) == []
    metrics = json.loads((stage_folder / "out/export.json").read_text())
    assert metrics["int8"] == "rejected" and "int8_size_bytes" not in metrics
    assert metrics["fp32_val_accuracy"] - metrics["int8_val_accuracy"] == pytest.approx(
        0.02, abs=1e-6
    )
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert re.search(r"out/int8/model.onnx: int8 accuracy \S+ is 0.0200 below fp32's", warning)
    assert "more than export.int8_max_drop 0.01;" in warning


def test_the_gate_passes_a_drop_within_the_limit() -> None:
    from imgpipe.export.quantize import Int8Report, rejection

    report = Int8Report(0.99, 0.97, 0.02, 0.025, 0.97, 0.1, 0.05, 256)
    assert rejection(report, 0.03, 0.01, Path("m.onnx")) is None
    assert rejection(report, 0.005, 0.01, Path("m.onnx")) is not None


def test_the_gate_refuses_int8_whose_probabilities_lose_their_calibration() -> None:
    from imgpipe.export.quantize import Int8Report, rejection

    report = Int8Report(0.99, 0.99, 0.02, 0.035, 0.99, 0.1, 0.05, 256)
    assert rejection(report, 0.005, 0.02, Path("m.onnx")) is None
    refused = rejection(report, 0.005, 0.01, Path("m.onnx"))
    assert refused is not None
    assert "int8 calibration error 0.0350 is 0.0150 above fp32's 0.0200" in refused
    assert "export.int8_max_ece_rise 0.01" in refused


def test_the_exported_graph_gives_the_calibrated_probabilities(stage_folder: Path) -> None:
    """The temperature is folded into the graph: onnxruntime's softmax equals torch's softmax
    of the logits divided by it, the argmax is unchanged, and the metadata carries the
    temperature and the operating point serve and predict apply."""
    from imgpipe.training.model import load_checkpoint

    run_export(("int8: true", "int8: false"))
    fp32 = stage_folder / "out/model.onnx"
    model, _ = load_checkpoint(stage_folder / "model.pt")
    images = make_split(6, seed=4).images
    probabilities, _ = OnnxClassifier(fp32).run(images)
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(images).permute(0, 3, 1, 2))
    np.testing.assert_allclose(probabilities, (logits / 1.7).softmax(1).numpy(), atol=1e-5)
    assert not np.allclose(probabilities, logits.softmax(1).numpy(), atol=1e-3)
    np.testing.assert_array_equal(probabilities.argmax(1), logits.argmax(1).numpy())
    meta = read_onnx_metadata(fp32)
    assert meta["temperature"] == 1.7
    assert meta["calibration"] == {
        "method": "temperature",
        "val_ece_uncalibrated": 0.09,
        "val_ece": 0.01,
    }
    assert meta["operating_point"] == {
        "positive_class": "right",
        "threshold": 0.4,
        "target": "sensitivity",
        "target_value": 0.9,
    }
