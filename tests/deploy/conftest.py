"""The deploy tests' fixtures: the tiny exported model and a few test images."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgpipe.data.splits import SplitArrays
from tests.conftest import make_split


@pytest.fixture(scope="module")
def onnx_model(tiny_onnx: Path) -> Path:
    return tiny_onnx


@pytest.fixture(scope="module")
def test_split() -> SplitArrays:
    return make_split(per_class=40, seed=7)
