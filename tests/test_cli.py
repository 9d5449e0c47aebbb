import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from imgpipe.cli import main
from imgpipe.export import export_onnx
from imgpipe.model import Classifier, ModelMeta
from tests.conftest import REPO_ROOT, pattern_images


def test_check_params(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["check-params", "--params", str(REPO_ROOT / "params.yaml")]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "params.yaml"
    bad.write_text((REPO_ROOT / "params.yaml").read_text().replace("epochs:", "epoch:"))
    assert main(["check-params", "--params", str(bad)]) == 2


def test_predict_classifies_files_and_reports_bad_ones(
    tiny_model: tuple[Classifier, ModelMeta], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, meta = tiny_model
    export_onnx(model, meta, tmp_path / "model.onnx", opset=18, provenance={})
    Image.fromarray(pattern_images(1, 0)[0, :, :, 0]).resize((64, 64)).save(tmp_path / "a.jpg")
    (tmp_path / "b.png").write_text("nope")
    code = main(
        [
            "predict",
            "--model",
            str(tmp_path / "model.onnx"),
            "--top-k",
            "2",
            str(tmp_path / "a.jpg"),
            str(tmp_path / "b.png"),
        ]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert [c["class"] for c in lines[0]["top"]] in (["left", "right"], ["right", "left"])
    assert abs(sum(c["probability"] for c in lines[0]["top"]) - 1) < 1e-5
    assert "not an image" in lines[1]["error"]


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    assert main(["info", str(tmp_path / "none.onnx")]) == 2


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO_ROOT / "stages").glob("*.py")))
def test_stage_scripts_explain_themselves(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "stages" / script), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.startswith("usage:")
    assert "Stage" in result.stdout


def test_bench_preprocess_reports_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.__main__ import main as bench_main

    out = tmp_path / "bench.json"
    arguments = ["--images", "24", "--size", "40", "--target", "32", "--workers", "2"]
    files = ["--folder", str(tmp_path / "jpegs"), "--output", str(out)]
    code = bench_main(["preprocess", *arguments, *files])
    assert code == 0
    results = json.loads(out.read_text())
    assert results["images"] == 24
    assert results["all_workers"]["workers"] == 2
    assert results["one_worker"]["array_bytes"] == 24 * 32 * 32 * 3 + 128  # npy header: 128 B
    assert results["speedup"] > 0
    assert results["all_workers"]["peak_rss_bytes"] > results["all_workers"]["array_bytes"]
