"""imgpipe drift against a reference built the way the drift-baseline stage builds it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgpipe.cli import main
from imgpipe.export import export_onnx
from imgpipe.features import feature_table
from imgpipe.model import Classifier, ModelMeta
from imgpipe.runtime import OnnxClassifier
from tests.conftest import pattern_images


def write_folder(root: Path, images: np.ndarray) -> Path:
    root.mkdir(parents=True)
    for i, pixels in enumerate(images):
        Image.fromarray(pixels[:, :, 0]).save(root / f"{i:04d}.png")
    return root


def images(per_class: int, seed: int) -> np.ndarray:
    return np.concatenate([pattern_images(per_class, c, seed=seed) for c in (0, 1)])


@pytest.fixture(scope="module")
def setup(
    tiny_model: tuple[Classifier, ModelMeta], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("drift")
    model, meta = tiny_model
    export_onnx(model, meta, root / "model.onnx", opset=18, provenance={})
    reference = feature_table(OnnxClassifier(root / "model.onnx"), images(150, seed=1))
    reference.to_parquet(root / "reference.parquet", index=False)
    return root, root / "model.onnx", root / "reference.parquet"


def run(setup: tuple[Path, Path, Path], current: Path, out: str) -> tuple[int, dict]:
    root, model, reference = setup
    code = main(["drift", "--current", str(current), "--reference", str(reference),
                 "--model", str(model), "--out", str(root / out)])  # fmt: skip
    return code, json.loads((root / out / "drift.json").read_text())


def test_same_distribution_is_not_drift(setup: tuple[Path, Path, Path]) -> None:
    folder = write_folder(setup[0] / "same", images(60, seed=2))
    code, summary = run(setup, folder, "same-report")
    assert code == 0, summary
    assert summary["features"]["drifted_share"] < 0.5
    assert summary["rows"] == {"reference": 300, "current": 120}
    assert (setup[0] / "same-report" / "report.html").stat().st_size > 10_000


def test_inverted_images_are_drift(setup: tuple[Path, Path, Path]) -> None:
    folder = write_folder(setup[0] / "inverted", 255 - images(60, seed=3))
    code, summary = run(setup, folder, "inverted-report")
    assert code == 1
    columns = summary["features"]["columns"]
    assert columns["brightness"]["drift_detected"] and columns["dark_fraction"]["drift_detected"]
    assert summary["features"]["drift_detected"] and summary["embedding"]["drift_detected"]


def test_logged_feature_table_and_bad_input(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    root, _, reference = setup
    table = tmp_path / "log.jsonl"
    import pandas as pd

    pd.read_parquet(reference).sample(100, random_state=0).to_json(
        table, orient="records", lines=True
    )
    code, _ = run(setup, table, "log-report")
    assert code == 0
    (tmp_path / "notes.txt").write_text("x")
    arguments = ["--reference", str(reference), "--model", str(root / "model.onnx")]
    notes = ["--current", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "o")]
    assert main(["drift", *notes, *arguments]) == 2
