"""The service tests' fixtures: the tiny exported model (and a copy with an operating point), a
test split, an in-process client and a live server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from imgpipe.data.splits import SplitArrays
from imgpipe.runtime.onnx_model import OnnxClassifier
from imgpipe.serving.app import create_app
from imgpipe.serving.settings import ServeConfig
from tests.conftest import make_split
from tests.runtime.model_variants import threshold_between, with_operating_point
from tests.serving.live import LiveServer


@pytest.fixture(scope="module")
def onnx_model(tiny_onnx: Path) -> Path:
    return tiny_onnx


@pytest.fixture(scope="module")
def test_split() -> SplitArrays:
    return make_split(per_class=40, seed=7)


@pytest.fixture(scope="module")
def screened_images(test_split: SplitArrays) -> np.ndarray:
    """Eight test images (both classes), few enough for one request."""
    return test_split.images[::10]


@pytest.fixture(scope="module")
def positive_probabilities(onnx_model: Path, screened_images: np.ndarray) -> np.ndarray:
    """The model's probability of the positive class for each of ``screened_images``."""
    return OnnxClassifier(onnx_model).run(screened_images)[0][:, 1].astype(np.float64)


@pytest.fixture(scope="module")
def screening_onnx(
    onnx_model: Path, positive_probabilities: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny model with an operating point whose threshold parts ``screened_images`` in
    half (none near it)."""
    threshold = threshold_between(positive_probabilities, below=len(positive_probabilities) // 2)
    destination = tmp_path_factory.mktemp("screening") / "model.onnx"
    return with_operating_point(onnx_model, destination, threshold)


@pytest.fixture
def client(onnx_model: Path, tmp_path: Path) -> Iterator[TestClient]:
    config = ServeConfig(
        model=onnx_model,
        max_upload_bytes=200_000,
        max_images=8,
        max_pixels=200 * 200,
        feature_log=tmp_path / "logs" / "requests.jsonl",
    )
    with TestClient(create_app(config)) as test_client:
        yield test_client


@pytest.fixture
def live_server(onnx_model: Path, tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(
        ServeConfig(model=onnx_model, feature_log=tmp_path / "requests.jsonl")
    ) as server:
        yield server
