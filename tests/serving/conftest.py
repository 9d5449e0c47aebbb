"""The service tests' fixtures: the tiny exported model, a test split, an in-process client and
a live server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from imgpipe.data.splits import SplitArrays
from imgpipe.serving.app import create_app
from imgpipe.serving.settings import ServeConfig
from tests.conftest import make_split
from tests.serving.live import LiveServer


@pytest.fixture(scope="module")
def onnx_model(tiny_onnx: Path) -> Path:
    return tiny_onnx


@pytest.fixture(scope="module")
def test_split() -> SplitArrays:
    return make_split(per_class=40, seed=7)


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
