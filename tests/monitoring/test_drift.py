"""imgpipe drift against a reference built the way the drift-baseline stage builds it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imgpipe.cli import main
from imgpipe.export.onnx import export_onnx
from imgpipe.monitoring.features import feature_table
from imgpipe.runtime.onnx_model import OnnxClassifier
from imgpipe.training.model import Classifier, ModelMeta
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


def run(setup: tuple[Path, Path, Path], current: Path, out: str) -> tuple[int, dict[str, Any]]:
    root, model, reference = setup
    code = main(
        [
            "drift",
            "--current",
            str(current),
            "--reference",
            str(reference),
            "--model",
            str(model),
            "--out",
            str(root / out),
        ]
    )
    return code, json.loads((root / out / "drift.json").read_text())


def test_same_distribution_is_not_drift(setup: tuple[Path, Path, Path]) -> None:
    folder = write_folder(setup[0] / "same", images(60, seed=2))
    code, summary = run(setup, folder, "same-report")
    assert code == 0, summary
    assert summary["features"]["drifted_share"] < 0.5
    assert summary["rows"] == {"reference": 300, "current": 120}
    html = (setup[0] / "same-report" / "report.html").read_text(encoding="utf-8")
    assert len(html) > 10_000
    # self-contained: opening it fetches no script, stylesheet or font from anywhere (the report
    # holds the model's features of production images)
    external = r"<script[^>]+src=|<link[^>]+href=|@import\s+(?:url\()?[\"']?(?:https?:)?//"
    assert re.findall(external, html) == []


def test_inverted_images_are_drift(setup: tuple[Path, Path, Path]) -> None:
    folder = write_folder(setup[0] / "inverted", 255 - images(60, seed=3))
    code, summary = run(setup, folder, "inverted-report")
    assert code == 1
    columns = summary["features"]["columns"]
    assert columns["brightness"]["drift_detected"] and columns["dark_fraction"]["drift_detected"]
    assert summary["features"]["drift_detected"] and summary["embedding"]["drift_detected"]


@pytest.mark.parametrize(
    ("options", "features_drift", "embedding_drift"),
    [
        (["--drift-share", "1.0"], False, True),  # only the embedding rule can fire
        (["--embedding-threshold", "1.0"], True, False),  # only the feature rule can fire
        (["--drift-share", "1.0", "--embedding-threshold", "1.0"], False, False),
    ],
)
def test_feature_and_embedding_rules_decide_separately(
    setup: tuple[Path, Path, Path], options: list[str], features_drift: bool, embedding_drift: bool
) -> None:
    root, model, reference = setup
    folder = root / "inverted-for-rules"
    if not folder.exists():
        write_folder(folder, 255 - images(60, seed=3))
    out = root / f"rules-{'-'.join(options)}"
    code = main(
        [
            "drift",
            "--current",
            str(folder),
            "--reference",
            str(reference),
            "--model",
            str(model),
            "--out",
            str(out),
            *options,
        ]
    )
    summary = json.loads((out / "drift.json").read_text())
    assert summary["features"]["drift_detected"] is features_drift
    assert summary["embedding"]["drift_detected"] is embedding_drift
    assert code == (1 if features_drift or embedding_drift else 0)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_logged_feature_tables_are_read(
    setup: tuple[Path, Path, Path], tmp_path: Path, suffix: str
) -> None:
    _, model, _ = setup
    table = feature_table(OnnxClassifier(model), images(60, seed=4))  # not the reference's
    path = tmp_path / f"log{suffix}"
    {
        ".jsonl": lambda: table.to_json(path, orient="records", lines=True),
        ".csv": lambda: table.to_csv(path, index=False),
        ".parquet": lambda: table.to_parquet(path, index=False),
    }[suffix]()
    code, summary = run(setup, path, f"log-report{suffix}")
    assert code == 0
    assert summary["rows"]["current"] == 120


def test_a_table_missing_columns_or_of_no_kind_is_exit_2(
    setup: tuple[Path, Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, model, reference = setup
    arguments = ["--reference", str(reference), "--model", str(model), "--out", str(tmp_path / "o")]
    table = feature_table(OnnxClassifier(model), images(20, seed=5))
    table.drop(columns=["confidence", "emb_00"]).to_csv(tmp_path / "partial.csv", index=False)
    assert main(["drift", "--current", str(tmp_path / "partial.csv"), *arguments]) == 2
    (tmp_path / "notes.txt").write_text("x")
    assert main(["drift", "--current", str(tmp_path / "notes.txt"), *arguments]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        "current data lacks the baseline's columns: confidence, emb_00",
        f"--current {tmp_path / 'notes.txt'}: expected a folder of images or a "
        ".parquet, .csv, .jsonl file",
    ]
    assert not (tmp_path / "o" / "drift.json").exists()


def test_drift_is_written_for_prometheus_too(setup: tuple[Path, Path, Path]) -> None:
    """--prometheus-textfile and --pushgateway carry drift.json's verdict and scores."""
    from tests.monitoring.exporters import fake_pushgateway, samples

    root, model, reference = setup
    folder = root / "inverted-for-prometheus"
    write_folder(folder, 255 - images(60, seed=3))
    textfile = root / "textfile" / "imgpipe_drift.prom"
    with fake_pushgateway() as (url, received):
        code = main(
            [
                "drift",
                "--current",
                str(folder),
                "--reference",
                str(reference),
                "--model",
                str(model),
                "--out",
                str(root / "prometheus-report"),
                "--prometheus-textfile",
                str(textfile),
                "--pushgateway",
                url,
            ]
        )
    summary = json.loads((root / "prometheus-report" / "drift.json").read_text())
    exported = samples(textfile.read_text())
    assert code == 1
    assert exported[("imgpipe_drift_detected", ())] == 1
    assert exported[("imgpipe_drift_embedding_score", ())] == summary["embedding"]["score"]
    drifted = summary["features"]["drifted_share"]
    assert exported[("imgpipe_drift_share_drifted_columns", ())] == drifted
    [(_, path, body)] = received
    assert path == "/metrics/job/imgpipe_drift"
    assert samples(body)[("imgpipe_drift_detected", ())] == 1


def test_a_textfile_node_exporter_would_ignore_is_refused_before_the_checks(
    setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, model, reference = setup
    code = main(
        [
            "drift",
            "--current",
            str(tmp_path / "not-even-there"),
            "--reference",
            str(reference),
            "--model",
            str(model),
            "--prometheus-textfile",
            str(tmp_path / "drift.txt"),
        ]
    )
    assert code == 2
