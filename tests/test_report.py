"""imgpipe report / check-metrics on a temporary git+DVC repo with two commits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imgpipe.cli import main

DVC_YAML = """\
metrics:
  - metrics.json
plots:
  - curve.tsv:
      x: step
      y: accuracy
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo, check=True, capture_output=True,
    )  # fmt: skip


def write_state(repo: Path, accuracy: float, f1: float, lr: float) -> None:
    (repo / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "macro_f1": f1}))
    (repo / "params.yaml").write_text(f"lr: {lr}\nepochs: 3\n")
    rows = "".join(f"{step}\t{accuracy * (step + 1) / 3:.4f}\n" for step in range(3))
    (repo / "curve.tsv").write_text("step\taccuracy\n" + rows)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    git(tmp_path, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    write_state(tmp_path, accuracy=0.90, f1=0.80, lr=0.003)
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "base")
    write_state(tmp_path, accuracy=0.95, f1=0.80, lr=0.0001)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_report_has_deltas_params_and_rendered_plots(repo: Path) -> None:
    assert main(["report", "--base", "HEAD", "--out", "out"]) == 0
    text = (repo / "out" / "report.md").read_text()
    assert "| metrics.json | accuracy | 0.9 | 0.95 | +0.05 |" in text
    assert "| metrics.json | macro_f1 | 0.8 | 0.8 | 0 |" in text
    assert "| params.yaml | lr | 0.003 | 0.0001 |" in text
    assert "epochs" not in text  # unchanged params stay out
    assert "![curve.tsv](plots/curve-tsv.png)" in text
    assert (repo / "out" / "plots" / "curve-tsv.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_metrics_uses_the_tolerance(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-metrics", "--against", "HEAD", "--tolerance", "0.1"]) == 0
    assert main(["check-metrics", "--against", "HEAD", "--tolerance", "0.01"]) == 1
    assert "metrics.json: accuracy: 0.9 -> 0.95" in capsys.readouterr().out
    assert (
        main(["check-metrics", "--against", "HEAD", "--tolerance", "0.01", "--key", "macro_f1"])
        == 0
    )


def test_unknown_revision_is_a_clear_error(repo: Path) -> None:
    assert main(["check-metrics", "--against", "no-such-rev"]) == 2
