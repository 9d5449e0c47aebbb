"""imgpipe predict: files and folders in batches, into JSON lines, CSV or Parquet."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imgpipe.cli import main
from imgpipe.runtime.onnx_model import OnnxClassifier, embedding_column_names
from tests.conftest import make_split
from tests.runtime.model_variants import threshold_between, with_operating_point


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A folder tree of 70 PNGs (more than one batch), OS junk, a text file and a PPM."""
    images = make_split(35, seed=4).images
    for i, pixels in enumerate(images):
        folder = tmp_path / "in" / ("a" if i % 2 else "b/nested")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[:, :, 0]).save(folder / f"{i:03d}.png")
    (tmp_path / "in" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "in" / "notes.png").write_text("not an image")
    Image.fromarray(images[0][:, :, 0]).save(tmp_path / "in" / "scan.ppm")  # not accepted
    return tmp_path / "in", images


def test_folders_become_rows_with_errors_for_bad_files(
    tiny_onnx: Path, inputs: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    folder, _ = inputs
    out = tmp_path / "predictions.csv"
    code = main(
        ["predict", str(folder), "--model", str(tiny_onnx), "--output", str(out), "--top-k", "2"]
    )
    assert code == 1  # some files could not be classified
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 72 and not any(".DS_Store" in r["path"] for r in rows)
    assert list(rows[0]) == [
        "path",
        "frame",
        "error",
        "class_1",
        "probability_1",
        "class_2",
        "probability_2",
    ]
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert errors.keys() == {"notes.png", "scan.ppm"}
    assert "accepted format" in errors["scan.ppm"]  # the service's policy
    good = [r for r in rows if not r["error"]]
    assert all(abs(float(r["probability_1"]) + float(r["probability_2"]) - 1) < 1e-5 for r in good)


def test_probabilities_and_embeddings_are_the_models(
    tiny_onnx: Path, inputs: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    folder, images = inputs
    out = tmp_path / "predictions.parquet"
    assert (
        main(
            [
                "predict",
                str(folder / "a"),
                str(folder / "b"),
                "--model",
                str(tiny_onnx),
                "--output",
                str(out),
                "--embeddings",
                "--top-k",
                "1",
            ]
        )
        == 0
    )
    table = pd.read_parquet(out)
    order = [int(Path(p).stem) for p in table["path"]]
    probabilities, embeddings = OnnxClassifier(tiny_onnx).run(images[order])
    classes = ["left", "right"]
    assert list(table["class_1"]) == [classes[i] for i in probabilities.argmax(1)]
    np.testing.assert_allclose(table["probability_1"], probabilities.max(1), atol=1e-5)
    emb = table[[c for c in table.columns if c.startswith("emb_")]].to_numpy()
    np.testing.assert_allclose(emb, embeddings, atol=1e-5)


def test_json_lines_on_stdout_and_a_clear_error_for_a_missing_path(
    tiny_onnx: Path, inputs: tuple[Path, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, images = inputs
    assert main(["predict", str(folder / "a" / "001.png"), "--model", str(tiny_onnx)]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    classifier = OnnxClassifier(tiny_onnx)
    probabilities, _ = classifier.run(images[[1]])  # 001.png holds image 1
    assert row["path"].endswith("001.png")
    assert "decision" not in row and "positive_probability" not in row  # no operating point
    assert row["class_1"] == classifier.classes[int(probabilities[0].argmax())]
    assert row["probability_1"] == pytest.approx(float(probabilities[0].max()), abs=1e-5)
    assert main(["predict", str(folder / "nothing"), "--model", str(tiny_onnx)]) == 2


def test_a_model_with_an_operating_point_adds_its_decision_before_the_embeddings(
    tiny_onnx: Path, inputs: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    folder, images = inputs
    positive = OnnxClassifier(tiny_onnx).run(images)[0][:, 1]
    threshold = threshold_between(positive, below=len(images) // 2)
    screening = with_operating_point(tiny_onnx, tmp_path / "screening.onnx", threshold)
    out = tmp_path / "predictions.csv"
    arguments = ["predict", str(folder), "--model", str(screening), "--output", str(out)]
    assert main([*arguments, "--top-k", "1", "--embeddings"]) == 1  # two files are no images
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns[:7]) == [
        "path",
        "frame",
        "error",
        "class_1",
        "probability_1",
        "positive_probability",
        "decision",
    ]
    assert list(table.columns[7:]) == embedding_column_names(
        OnnxClassifier(tiny_onnx).embedding_dims
    )
    failed = table[table["error"] != ""]
    assert failed[["positive_probability", "decision"]].to_numpy().tolist() == [["", ""]] * 2
    good = table[table["error"] == ""]
    order = [int(Path(p).stem) for p in good["path"]]
    expected = np.where(positive[order] >= threshold, "positive", "negative")
    assert list(good["decision"]) == list(expected)
    assert sorted(set(expected)) == ["negative", "positive"]  # the threshold splits the images
    np.testing.assert_allclose(
        good["positive_probability"].astype(float), positive[order], atol=1e-6
    )
    # --threshold moves the rule: at 0 every image is positive.
    assert main([*arguments, "--threshold", "0"]) == 1
    moved = pd.read_csv(out, keep_default_na=False)
    assert set(moved[moved["error"] == ""]["decision"]) == {"positive"}
