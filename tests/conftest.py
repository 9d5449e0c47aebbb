"""Shared fixtures: small synthetic datasets and a tiny trained model, built in seconds."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from imgpipe.data.splits import SplitArrays
from imgpipe.params import load_params
from imgpipe.training.model import Classifier, ModelMeta, create_network
from imgpipe.training.settings import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
# The repositories tests `dvc init` lack the clone's `core.analytics = false`: no usage reports
# from them either (tests/test_privacy.py checks the clone's setting without this).
os.environ["DVC_NO_ANALYTICS"] = "1"
# Per-test timeout of `slow` tests (pytest-timeout): end-to-end pipeline runs take minutes, far
# over pyproject's default for the rest (300 s).
SLOW_TIMEOUT_S = 1800


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give `slow` tests the longer timeout, unless they set their own."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


def pattern_images(count: int, label: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Greyscale images a tiny model can tell apart: class 0 bright left half, class 1 right."""
    rng = np.random.default_rng(seed + 1000 * label)
    images = rng.integers(0, 60, size=(count, size, size, 1), dtype=np.uint8)
    half = slice(0, size // 2) if label == 0 else slice(size // 2, size)
    images[:, :, half, :] += 150
    return images


def make_split(per_class: int, size: int = 32, seed: int = 0) -> SplitArrays:
    images = np.concatenate([pattern_images(per_class, c, size, seed) for c in (0, 1)])
    labels = np.repeat(np.arange(2), per_class).astype(np.int64)
    files = [f"{c}/{i}.png" for c in ("left", "right") for i in range(per_class)]
    return SplitArrays(images, labels, ["left", "right"], files)


def train_config(**changes: object) -> TrainConfig:
    """The committed training settings shrunk to seconds on the pattern images, with
    ``changes`` (validated, as params.yaml would be)."""
    tiny = {
        "model": "test_resnet",
        "pretrained": False,
        "epochs": 4,
        "batch_size": 8,
        "lr": 3e-3,
        "weight_decay": 0.05,
        "warmup_epochs": 1,
        "label_smoothing": 0.1,
        "ema_decay": 0.9,
        "seed": 0,
        "device": "cpu",
        "processes": 1,
        "compile": False,
        "augment": {"degrees": 5, "translate": 0.05, "scale": 0, "hflip": False},
    }
    return load_params(REPO_ROOT / "params.yaml").training().replace(**{**tiny, **changes})


def write_image_folder(root: Path, per_class: int = 6, size: int = 32) -> Path:
    """An unsplit ImageFolder tree of PNGs with the two pattern classes."""
    for label, name in enumerate(("left", "right")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, pixels in enumerate(pattern_images(per_class, label, size)):
            Image.fromarray(pixels[:, :, 0], mode="L").save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "raw")


@pytest.fixture(scope="session")
def tiny_model() -> tuple[Classifier, ModelMeta]:
    torch.manual_seed(0)
    net = create_network("test_resnet", num_classes=2, channels=1)
    model = Classifier(net, [0.3], [0.25]).eval()
    meta = ModelMeta("test_resnet", ["left", "right"], 32, 1, [0.3], [0.25])
    return model, meta


@pytest.fixture(scope="session")
def tiny_onnx(
    tiny_model: tuple[Classifier, ModelMeta], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``tiny_model`` exported as the export-onnx stage does (checkpoint sha256 "c0ffee")."""
    from imgpipe.export.onnx import export_onnx

    model, meta = tiny_model
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, meta, path, opset=18, provenance={"checkpoint_sha256": "c0ffee"})
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def gcs_emulator(bucket: str) -> Iterator[str]:
    """gcp-storage-emulator on loopback with ``bucket`` created; yields its URL and points
    ``STORAGE_EMULATOR_HOST`` (read by gcsfs, hence by DVC and the gs:// source) at it."""
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("STORAGE_EMULATOR_HOST", url)
            yield url
    finally:
        server.stop()


@pytest.fixture
def weights(tmp_path: Path) -> str:
    """A 'pretrained' test_resnet weights file (1000 classes, RGB), as users bring them."""
    torch.manual_seed(7)
    path = tmp_path / "pretrained.pth"
    torch.save(timm.create_model("test_resnet", num_classes=1000).state_dict(), path)
    return str(path)
