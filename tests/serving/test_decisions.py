"""Decisions at the model's operating point: the service and ``imgpipe predict`` apply one rule
to the same images (an image exactly at the threshold is positive, one just under it negative),
``--threshold`` moves the rule, and a model without an operating point answers as before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imgpipe.cli import main
from imgpipe.errors import ImgpipeError
from imgpipe.serving.app import create_app
from imgpipe.serving.settings import ServeConfig
from tests.runtime.model_variants import POSITIVE_CLASS, threshold_between, with_operating_point
from tests.serving.live import uploads


def served(
    model: Path, images: np.ndarray, threshold: float | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The service's answer to one /predict request with ``images``, and its /health model."""
    with TestClient(create_app(ServeConfig(model=model, threshold=threshold))) as client:
        answer = client.post("/predict", files=uploads(images))
        assert answer.status_code == 200, answer.text
        return answer.json(), client.get("/health").json()["model"]


def predicted(model: Path, images: np.ndarray, folder: Path, *options: str) -> list[dict[str, Any]]:
    """``imgpipe predict``'s rows for ``images`` saved as PNGs in ``folder``, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, pixels in enumerate(images):
        Image.fromarray(pixels[:, :, 0]).save(folder / f"{index:03d}.png")
    out = folder.parent / f"{folder.name}.jsonl"
    arguments = ["predict", str(folder), "--model", str(model), "--output", str(out), *options]
    assert main(arguments) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_the_service_and_predict_decide_alike_at_the_models_threshold(
    screening_onnx: Path,
    screened_images: np.ndarray,
    positive_probabilities: np.ndarray,
    tmp_path: Path,
) -> None:
    body, model = served(screening_onnx, screened_images)
    threshold = body["operating_point"]["threshold"]
    assert body["operating_point"] == {"positive_class": POSITIVE_CLASS, "threshold": threshold}
    assert model["operating_point"] == body["operating_point"]
    expected = ["positive" if p >= threshold else "negative" for p in positive_probabilities]
    assert expected.count("positive") == len(expected) // 2  # the fixture's threshold parts them
    assert [p["decision"] for p in body["predictions"]] == expected
    served_positive = [p["positive_probability"] for p in body["predictions"]]
    np.testing.assert_allclose(served_positive, positive_probabilities, atol=1e-6)
    rows = predicted(screening_onnx, screened_images, tmp_path / "images")
    assert [row["decision"] for row in rows] == expected
    np.testing.assert_allclose(
        [r["positive_probability"] for r in rows], served_positive, atol=1e-6
    )


def test_an_image_at_the_threshold_is_positive_and_just_under_it_negative(
    onnx_model: Path, screening_onnx: Path, screened_images: np.ndarray, tmp_path: Path
) -> None:
    image = screened_images[:1]
    probability = served(screening_onnx, image)[0]["predictions"][0]["positive_probability"]
    cases = {
        "just-under": (np.nextafter(probability, 0.0), "positive"),
        "at": (probability, "positive"),
        "just-over": (np.nextafter(probability, 1.0), "negative"),
    }
    for name, (threshold, decision) in cases.items():
        model = with_operating_point(onnx_model, tmp_path / f"{name}.onnx", float(threshold))
        answer, _ = served(model, image)
        assert answer["predictions"][0]["decision"] == decision, name
        assert predicted(model, image, tmp_path / name)[0]["decision"] == decision, name


def test_the_threshold_setting_moves_the_decisions(
    screening_onnx: Path,
    screened_images: np.ndarray,
    positive_probabilities: np.ndarray,
    tmp_path: Path,
) -> None:
    lower = threshold_between(positive_probabilities, below=2)
    expected = ["positive" if p >= lower else "negative" for p in positive_probabilities]
    assert expected.count("positive") == len(expected) - 2  # not the model's own split
    body, model = served(screening_onnx, screened_images, threshold=lower)
    point = {"positive_class": POSITIVE_CLASS, "threshold": lower}
    assert body["operating_point"] == point and model["operating_point"] == point
    assert [p["decision"] for p in body["predictions"]] == expected
    rows = predicted(screening_onnx, screened_images, tmp_path / "in", "--threshold", repr(lower))
    assert [row["decision"] for row in rows] == expected


def test_without_an_operating_point_there_are_no_decisions(
    client: TestClient, screened_images: np.ndarray, onnx_model: Path
) -> None:
    body = client.post("/predict", files=uploads(screened_images[:2])).json()
    assert body["operating_point"] is None
    assert [(p["decision"], p["positive_probability"]) for p in body["predictions"]] == [
        (None, None)
    ] * 2
    assert client.get("/health").json()["model"]["operating_point"] is None
    with pytest.raises(ImgpipeError, match="the model has no positive class"):
        create_app(ServeConfig(model=onnx_model, threshold=0.5))


def test_the_schema_documents_the_decision(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    decision = schemas["ImagePrediction"]["properties"]["decision"]
    assert {"type": "string", "enum": ["positive", "negative"]} in decision["anyOf"]
    point = {"$ref": "#/components/schemas/ServedOperatingPoint"}
    assert point in schemas["PredictResponse"]["properties"]["operating_point"]["anyOf"]
    assert point in schemas["ModelIdentity"]["properties"]["operating_point"]["anyOf"]
    assert schemas["ServedOperatingPoint"]["required"] == ["positive_class", "threshold"]
