"""The int8 gate as a library function: off, written, or refused (with the folder left empty),
and the calibration draw it rests on."""

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import imgpipe.export.quantize
from imgpipe.export.quantize import (
    Int8Quantiser,
    calibration_rows,
    export_int8,
    float_convolution_tries,
    quantize_int8,
)
from imgpipe.runtime.onnx_model import read_onnx_metadata
from imgpipe.training.model import Classifier, ModelMeta
from tests.conftest import make_split

GATE: dict[str, Any] = {"max_drop": 1.0, "max_ece_rise": 1.0, "float_convolutions": 1}


@pytest.fixture
def train_folder(tmp_path: Path) -> Path:
    from imgpipe.data.split_writer import write_labels_and_meta

    split, folder = make_split(20, seed=1), tmp_path / "train"
    folder.mkdir()
    np.save(folder / "images.npy", split.images)
    write_labels_and_meta(folder, split.labels.tolist(), split.classes, split.files)
    return folder


def test_calibration_draws_the_same_images_as_every_earlier_export() -> None:
    """The seed decides the int8 file's bytes: this draw is what committed outputs rest on."""
    assert calibration_rows(10, 4).tolist() == [2, 4, 6, 7]
    assert calibration_rows(3, 8).tolist() == [0, 1, 2]  # fewer than asked for: all of them
    assert calibration_rows(10, 4, seed=1).tolist() != [2, 4, 6, 7]


def test_int8_off_writes_an_empty_folder_without_reading_the_training_split(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "int8"
    val = make_split(4, seed=2)
    missing = tmp_path / "no-train"
    result = export_int8(
        tiny_onnx, folder, missing, val, enabled=False, calibration_images=8, **GATE
    )
    assert result == {"int8": "off"} and list(folder.iterdir()) == []


def test_the_gate_writes_a_good_int8_model_and_refuses_one_past_the_limit(
    tiny_onnx: Path, train_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    val, folder = make_split(10, seed=2), tmp_path / "int8"
    kept = export_int8(
        tiny_onnx, folder, train_folder, val, enabled=True, calibration_images=16, **GATE
    )
    assert kept["int8"] == "written" and kept["int8_calibration_images"] == 16
    assert kept["int8_size_bytes"] == (folder / "model.onnx").stat().st_size
    assert read_onnx_metadata(folder / "model.onnx")["quantization"]["calibration_images"] == 16
    with caplog.at_level(logging.WARNING):  # a drop of 0 is still more than -1
        refused = export_int8(
            tiny_onnx,
            folder,
            train_folder,
            val,
            enabled=True,
            calibration_images=16,
            **(GATE | {"max_drop": -1}),
        )
    assert refused["int8"] == "rejected" and "int8_size_bytes" not in refused
    assert {k: v for k, v in refused.items() if k != "int8"} == {
        k: v for k, v in kept.items() if k not in ("int8", "int8_size_bytes")
    }
    assert list(folder.iterdir()) == []  # the written model is gone too: the folder is replaced
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith(f"{folder / 'model.onnx'}: int8 accuracy")


def test_onnxruntime_s_quantiser_logs_one_summary_line(
    tiny_model: tuple[Classifier, ModelMeta], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its per-tensor INFO lines (through the root logger; 87 for EfficientNet-Lite0) stay
    out of the user's log. A convolution whose folded weights are tiny next to its bias makes
    it log them ("Increased scale ... to ensure bias input ..."), as real networks do."""
    from imgpipe.export.onnx import export_onnx

    model, meta = copy.deepcopy(tiny_model[0]), tiny_model[1]
    with torch.no_grad():
        model.net.bn1.weight.mul_(1e-6)
        model.net.bn1.bias.fill_(1.0)
    fp32 = tmp_path / "model.onnx"
    export_onnx(model, meta, fp32, opset=18, provenance={})
    with caplog.at_level(logging.DEBUG):
        quantize_int8(
            fp32, tmp_path / "int8.onnx", make_split(8, seed=3).images, float_convolutions=1
        )
    assert [r for r in caplog.records if "onnxruntime" in r.pathname] == []
    [summary] = [r.getMessage() for r in caplog.records if r.name == "imgpipe.export.quantize"]
    assert summary.startswith("int8: quantised on 16 calibration images (")
    assert int(summary.split("(")[1].split()[0]) > 0  # lines were there, and were left out
    assert_no_hidden_filter()  # the filter is gone again


def test_a_failed_try_logs_no_summary_and_leaves_no_filter(
    tiny_onnx: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calibration = make_split(8, seed=3).images
    with (
        caplog.at_level(logging.INFO),
        pytest.raises(RuntimeError, match="disk full"),
        Int8Quantiser(tiny_onnx, calibration),
    ):
        raise RuntimeError("disk full")
    assert "quantised on" not in caplog.text  # the error, not a success line, says what happened
    assert_no_hidden_filter()


def assert_no_hidden_filter() -> None:
    """No log filter of the quantiser's is left on the root logger or its handlers."""
    root = logging.getLogger()
    for holder in (root, *root.handlers):
        assert not [f for f in holder.filters if type(f).__name__ == "_Hidden"]


def test_the_first_n_convolutions_stay_float(
    tiny_model: tuple[Classifier, ModelMeta], tmp_path: Path
) -> None:
    import onnx

    from imgpipe.export.onnx import export_onnx

    fp32 = tmp_path / "model.onnx"
    export_onnx(tiny_model[0], tiny_model[1], fp32, opset=18, provenance={})
    calibration = make_split(8, seed=3).images

    def quantised_convolutions(float_convolutions: int) -> list[bool]:
        """For each Conv in graph order: whether its weights come through a DequantizeLinear."""
        path = tmp_path / f"int8-{float_convolutions}.onnx"
        quantize_int8(fp32, path, calibration, float_convolutions=float_convolutions)
        graph = onnx.load(path).graph
        dequantised = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        meta = read_onnx_metadata(path)["quantization"]
        assert meta["float"] == {0: "none", 1: "first convolution"}.get(
            float_convolutions, f"first {float_convolutions} convolutions"
        )
        return [n.input[1] in dequantised for n in graph.node if n.op_type == "Conv"]

    assert all(quantised_convolutions(0))
    two_float = quantised_convolutions(2)
    assert len(two_float) > 2 and two_float[:2] == [False, False] and all(two_float[2:])


def test_auto_tries_1_2_4_up_to_half_the_convolutions() -> None:
    assert float_convolution_tries("auto", 20) == [1, 2, 4, 8]
    assert float_convolution_tries("auto", 4) == [1, 2]
    assert float_convolution_tries("auto", 3) == [1]  # one try at least
    assert float_convolution_tries(5, 20) == [5]


def test_auto_keeps_the_fewest_float_convolutions_that_pass_the_gate(
    tiny_onnx: Path,
    train_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The real quantisation and scoring; the gate refuses the first try (one float
    convolution), so the second (two) is written, and the metrics say which."""
    verdicts = iter(["refused: one float convolution", None])
    gate = imgpipe.export.quantize.rejection
    monkeypatch.setattr(imgpipe.export.quantize, "rejection", lambda *a: gate(*a) or next(verdicts))
    val, folder = make_split(10, seed=2), tmp_path / "int8"
    settings = GATE | {"float_convolutions": "auto"}
    with caplog.at_level(logging.INFO):
        kept = export_int8(
            tiny_onnx, folder, train_folder, val, enabled=True, calibration_images=16, **settings
        )
    assert kept["int8"] == "written" and kept["int8_float_convolutions"] == 2
    quantization = read_onnx_metadata(folder / "model.onnx")["quantization"]
    assert quantization["float"] == "first 2 convolutions"
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("int8 with first convolution float: val accuracy") for m in messages)
    assert sum(m.startswith("int8: quantised on 16 calibration images") for m in messages) == 1

    verdicts = iter(["refused"] * 8)  # every try refused: the warning names them
    with caplog.at_level(logging.WARNING):
        caplog.clear()
        refused = export_int8(
            tiny_onnx, folder, train_folder, val, enabled=True, calibration_images=16, **settings
        )
    assert refused["int8"] == "rejected" and list(folder.iterdir()) == []
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    # test_resnet: 1, 2 and 4 are at most half of its convolutions
    assert warning.endswith("(export.int8_float_convolutions auto tried [1, 2, 4])")


def test_calibration_ranges_do_not_depend_on_the_batch_size(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calibrator reads small batches for speed; every tensor's min/max, hence the int8
    file, is the same as with all images in one batch."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quantize = imgpipe.export.quantize
    prepared = tmp_path / "prepared.onnx"
    quant_pre_process(str(tiny_onnx), str(prepared), skip_symbolic_shape=True)
    calibration, default = make_split(24, seed=4).images, quantize.CALIBRATION_BATCH
    assert default < len(calibration)

    def ranges(images: np.ndarray, batch: int) -> dict[str, list[float]]:
        monkeypatch.setattr(quantize, "CALIBRATION_BATCH", batch)
        scratch = tmp_path / f"run-{len(images)}-{batch}"
        scratch.mkdir()
        found = quantize._activation_ranges(prepared, quantize._batches(images), scratch)
        return {name: np.ravel(v.range_value).tolist() for name, v in found.data.items()}

    whole = ranges(calibration, batch=len(calibration))
    assert len(whole) > 4 and ranges(calibration, batch=default) == whole
    assert ranges(calibration[:3], batch=default) != whole  # fewer images: other ranges


@pytest.mark.parametrize("per_class", [40, 10])  # more images than one batch, and fewer
def test_scoring_keeps_the_warm_up_batch_s_predictions(tiny_onnx: Path, per_class: int) -> None:
    """The first batch warms the session up and its predictions are kept: every image is
    scored once, as one plain run scores it; the time covers the batches after it."""
    from imgpipe.runtime.onnx_model import OnnxClassifier

    images = make_split(per_class, seed=5).images
    scores = imgpipe.export.quantize.score(tiny_onnx, images)
    expected, _ = OnnxClassifier(tiny_onnx).run(images, imgpipe.export.quantize.LATENCY_BATCH)
    assert scores.probabilities.shape == (len(images), 2)
    np.testing.assert_array_equal(scores.probabilities, expected)
    assert scores.ms_per_image > 0
