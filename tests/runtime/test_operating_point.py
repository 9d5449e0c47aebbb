"""The operating point in the model's metadata: read, checked, overridden, and applied to
probabilities the same way for every consumer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgpipe.errors import ImgpipeError
from imgpipe.runtime.classify import decide, decisions_per_image
from imgpipe.runtime.onnx_model import OnnxClassifier, OperatingPoint, read_operating_point
from tests.runtime.model_variants import with_metadata, with_operating_point

CLASSES = ["left", "right"]
HERE = Path("model.onnx")


@pytest.mark.parametrize("meta", [{}, {"operating_point": None}], ids=["absent", "null"])
def test_no_operating_point_is_none(meta: dict[str, Any]) -> None:
    assert read_operating_point(meta, CLASSES, HERE) is None


def test_the_operating_point_export_writes_is_read() -> None:
    entry = {"positive_class": "right", "threshold": 0.37, "target": "sensitivity"}
    point = read_operating_point({"operating_point": entry}, CLASSES, HERE)
    assert point == OperatingPoint("right", 0.37)
    assert read_operating_point({"operating_point": entry | {"threshold": 1}}, CLASSES, HERE) == (
        OperatingPoint("right", 1.0)
    )


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("right", "expected {positive_class, threshold, ...}, got 'right'"),
        ({"threshold": 0.5}, "expected {positive_class, threshold, ...}, got {'threshold': 0.5}"),
        (
            {"positive_class": "pneumonia", "threshold": 0.5},
            "positive_class 'pneumonia' is not among ['left', 'right']",
        ),
        (
            {"positive_class": "right", "threshold": 1.5},
            "threshold 1.5: expected a probability from 0 to 1",
        ),
        (
            {"positive_class": "right", "threshold": -0.01},
            "threshold -0.01: expected a probability from 0 to 1",
        ),
        (
            {"positive_class": "right", "threshold": "0.5"},
            "threshold '0.5': expected a probability from 0 to 1",
        ),
        (
            {"positive_class": "right", "threshold": True},
            "threshold True: expected a probability from 0 to 1",
        ),
    ],
    ids=["not-an-object", "no-class", "unknown-class", "over-1", "negative", "string", "bool"],
)
def test_a_malformed_operating_point_is_a_clear_error(entry: object, problem: str) -> None:
    with pytest.raises(ImgpipeError) as raised:
        read_operating_point({"operating_point": entry}, CLASSES, HERE)
    assert str(raised.value) == f"model.onnx: metadata 'operating_point': {problem}"


def test_the_classifier_reads_and_checks_its_files_operating_point(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    screening = with_operating_point(tiny_onnx, tmp_path / "screening.onnx", 0.4)
    assert OnnxClassifier(screening).operating_point == OperatingPoint("right", 0.4)
    assert OnnxClassifier(tiny_onnx).operating_point is None
    broken = with_metadata(
        tiny_onnx, tmp_path / "broken.onnx", operating_point={"positive_class": "x", "threshold": 1}
    )
    with pytest.raises(ImgpipeError, match=rf"^{broken}: metadata 'operating_point': "):
        OnnxClassifier(broken)


def test_a_threshold_override_replaces_the_models(tiny_onnx: Path, tmp_path: Path) -> None:
    screening = with_operating_point(tiny_onnx, tmp_path / "screening.onnx", 0.4)
    assert OnnxClassifier(screening, threshold=0.9).operating_point == OperatingPoint("right", 0.9)
    with pytest.raises(ImgpipeError) as raised:
        OnnxClassifier(screening, threshold=1.2)
    assert str(raised.value) == "--threshold 1.2: expected a probability from 0 to 1"
    with pytest.raises(ImgpipeError) as raised:
        OnnxClassifier(tiny_onnx, threshold=0.5)
    assert str(raised.value) == (
        f"{tiny_onnx}: the model has no positive class (set evaluate.positive_class and rerun "
        "dvc repro); --threshold needs one"
    )


def test_decide_calls_positive_from_the_threshold_up() -> None:
    probabilities = np.array([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [0.61, 0.39]], np.float32)
    at = float(probabilities[1, 1])  # a float32 probability exactly at the threshold: positive
    decisions, positive = decide(probabilities, CLASSES, OperatingPoint("right", at))
    assert decisions == ["negative", "positive", "positive", "negative"]
    np.testing.assert_array_equal(positive, probabilities[:, 1])
    above = float(np.nextafter(at, 1))  # the same image just under the threshold: negative
    assert decide(probabilities, CLASSES, OperatingPoint("right", above))[0][1] == "negative"
    # The positive class's own column, whichever it is.
    decisions, positive = decide(probabilities, CLASSES, OperatingPoint("left", 0.65))
    assert decisions == ["positive", "negative", "negative", "negative"]
    np.testing.assert_array_equal(positive, probabilities[:, 0])


def test_decisions_per_image_are_none_without_an_operating_point(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    probabilities = np.array([[0.7, 0.3], [0.2, 0.8]], np.float32)
    assert decisions_per_image(OnnxClassifier(tiny_onnx), probabilities) == [(None, None)] * 2
    screening = OnnxClassifier(with_operating_point(tiny_onnx, tmp_path / "s.onnx", 0.5))
    screened = decisions_per_image(screening, probabilities)
    assert [decision for _, decision in screened] == ["negative", "positive"]
    assert [probability for probability, _ in screened] == probabilities[:, 1].tolist()
