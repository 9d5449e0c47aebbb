"""imgpipe report / check-metrics on a temporary git+DVC repo with two commits."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from imgpipe.cli import main

DVC_YAML = """\
metrics:
  - metrics.json
  - metrics/export.json
  - metrics/drift_baseline.json
plots:
  - curve.tsv:
      x: step
      y: accuracy
  - grid.png
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def write_state(repo: Path, accuracy: float, f1: float, lr: float, int8: str = "written") -> None:
    metrics = {
        "accuracy": accuracy,
        "macro_f1": f1,
        "ece": 0.05 + (0.95 - accuracy),
        "best": {"val_loss": 1 - accuracy},
    }
    (repo / "metrics.json").write_text(json.dumps(metrics))
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/drift_baseline.json").write_text(
        json.dumps({"predicted_share": {"cat": accuracy / 2, "dog": 1 - accuracy / 2}})
    )
    (repo / "metrics/export.json").write_text(
        json.dumps({"int8": int8, "fp32_val_accuracy": 0.99, "int8_val_accuracy": 0.97})
    )
    (repo / "metrics/eval").mkdir(exist_ok=True)
    (repo / "metrics/eval/per_class.csv").write_text(
        f"class,precision,recall,f1,support\ncat,0.9,0.9,{f1},10\ndog,0.8,0.8,0.8,10\n"
    )
    (repo / "params.yaml").write_text(f"lr: {lr}\nepochs: 3\n")
    rows = "".join(f"{step}\t{accuracy * (step + 1) / 3:.4f}\n" for step in range(3))
    (repo / "curve.tsv").write_text("step\taccuracy\n" + rows)
    Image.new("RGB", (8, 8), (int(accuracy * 255), 0, 0)).save(repo / "grid.png")


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    git(tmp_path, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    write_state(tmp_path, accuracy=0.90, f1=0.80, lr=0.003)
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "base")
    write_state(tmp_path, accuracy=0.95, f1=0.70, lr=0.0001)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_report_puts_what_moved_first_and_collapses_the_rest(repo: Path) -> None:
    assert main(["report", "--base", "HEAD", "--out", "out"]) == 0
    text = (repo / "out" / "report.md").read_text()
    lines = text.splitlines()
    headline = [
        line
        for line in lines
        if line.startswith("| accuracy")
        or line.startswith("| macro_f1")
        or line.startswith("| ece")
    ]
    assert headline == [
        "| accuracy | 0.9 | 0.95 | +0.05 | improvement |",
        "| macro_f1 | 0.8 | 0.7 | -0.1 | **regression** |",
        "| ece | 0.1 | 0.05 | -0.05 | improvement |",  # lower is better
    ]
    assert text.index("| accuracy") < text.index("### Params") < text.index("<details>")
    assert "| lr | 0.003 | 0.0001 |" in text and "epochs" not in text
    sections = re.findall(r"<details>\n<summary>(.*?)</summary>(.*?)</details>", text, re.S)
    titles = [title for title, _ in sections]
    assert titles == [
        "Other metrics that moved (1)",
        "Per-class scores (2 classes)",
        "Drift baseline (predicted shares and image statistics)",
    ]
    assert "| metrics.json | best.val_loss | 0.1 | 0.05 | -0.05 |" in sections[0][1]
    assert "| cat | 0.8 | 0.7 | 0.9 | 0.9 | 10 |" in sections[1][1]
    assert "predicted_share.cat" in sections[2][1] and "not shown" not in text
    assert "![curve.tsv](plots/curve-tsv.png)" in text
    assert (repo / "out" / "plots" / "curve-tsv.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_images_of_data_stay_out_unless_asked_for(repo: Path) -> None:
    assert main(["report", "--base", "HEAD", "--out", "private"]) == 0
    text = (repo / "private" / "report.md").read_text()
    assert "grid.png" in text and "not included (privacy)" in text
    assert "![grid.png" not in text
    assert sorted(p.name for p in (repo / "private" / "plots").iterdir()) == ["curve-tsv.png"]
    assert main(["report", "--base", "HEAD", "--out", "shared", "--data-images"]) == 0
    shared = (repo / "shared" / "report.md").read_text()
    assert shared.count("![grid.png") == 2  # base and this change
    assert "not included" not in shared


def test_check_metrics_uses_the_tolerance(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-metrics", "--against", "HEAD", "--tolerance", "0.11"]) == 0
    assert main(["check-metrics", "--against", "HEAD", "--tolerance", "0.01"]) == 1
    assert "metrics.json: accuracy: 0.9 -> 0.95" in capsys.readouterr().out
    assert main(["check-metrics", "--against", "HEAD", "--tolerance", "0.06", "--key", "ece"]) == 0


def test_unknown_revision_is_a_clear_error(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["check-metrics", "--against", "no-such-rev"]) == 2
    [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error.startswith("dvc metrics diff no-such-rev")
    assert "unknown Git revision 'no-such-rev'" in error  # DVC's own words say what was wrong


def test_a_refused_int8_model_is_said_under_the_headline(repo: Path) -> None:
    main(["report", "--base", "HEAD", "--out", "kept"])
    assert "int8 model rejected" not in (repo / "kept" / "report.md").read_text()
    write_state(repo, accuracy=0.95, f1=0.70, lr=0.0001, int8="rejected")
    assert main(["report", "--base", "HEAD", "--out", "refused"]) == 0
    text = (repo / "refused" / "report.md").read_text()
    line = "**int8 model rejected**: validation accuracy 0.97 against fp32's 0.99"
    assert text.index("| ece") < text.index(line) < text.index("### Params")
