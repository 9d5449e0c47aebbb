import ast
import json
import logging
import re
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from imgpipe.cli import main
from tests.conftest import REPO_ROOT
from tests.runtime.model_variants import with_metadata

ERROR_LINE = re.compile(r"^\d\d:\d\d:\d\d ERROR imgpipe: (.*)$")


def error_lines(stderr: str) -> list[str]:
    """The messages of the ``HH:MM:SS ERROR imgpipe: ...`` lines; asserts nothing else was
    printed (no traceback, no second line)."""
    lines = stderr.strip().splitlines()
    messages = [m.group(1) for line in lines if (m := ERROR_LINE.match(line))]
    assert len(messages) == len(lines), stderr
    return messages


def imgpipe(*arguments: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imgpipe.cli", *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def test_check_params(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["check-params", "--params", str(REPO_ROOT / "params.yaml")]) == 0
    assert capsys.readouterr().out.startswith(f"{REPO_ROOT / 'params.yaml'}: OK (test_resnet, ")
    bad = tmp_path / "params.yaml"
    bad.write_text((REPO_ROOT / "params.yaml").read_text().replace("\nepochs:", "\nepoch:"))
    result = imgpipe("check-params", "--params", str(bad))
    assert result.returncode == 2 and result.stdout == ""
    assert error_lines(result.stderr) == [
        f"{bad}: missing key 'epochs'; unknown key 'epoch' (did you mean 'epochs'?)"
    ]


def test_info_without_a_model_is_one_clear_line(tmp_path: Path) -> None:
    result = imgpipe("info", str(tmp_path / "none.onnx"))
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"{tmp_path / 'none.onnx'}: ONNX model not found (run `dvc repro export-onnx`)"
    ]
    outside = imgpipe("info", cwd=tmp_path)  # no dvc.yaml to take the default path from
    assert error_lines(outside.stderr) == [
        "--model: no dvc.yaml here to take the pipeline's path from; pass --model"
    ]


def test_info_prints_the_embedded_metadata(
    tiny_onnx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(tiny_onnx)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["classes"] == ["left", "right"] and shown["checkpoint_sha256"] == "c0ffee"


STAGES = sorted(p.name for p in (REPO_ROOT / "stages").glob("*.py"))


def run_stage_script(script: str, *arguments: str) -> None:
    """A stage script run in this process, as ``python stages/<script> ...`` would run it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [script, *arguments])
        runpy.run_path(str(REPO_ROOT / "stages" / script), run_name="__main__")


@pytest.mark.parametrize("script", STAGES)
def test_stage_scripts_explain_themselves(script: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        run_stage_script(script, "--help")
    assert done.value.code == 0
    shown = capsys.readouterr().out
    module = ast.parse((REPO_ROOT / "stages" / script).read_text())
    summary = (ast.get_docstring(module) or "").split(". ")[0]
    squeezed = "".join(shown.split())  # argparse re-wraps the text, at hyphens too
    assert shown.startswith("usage: ") and summary and "".join(summary.split()) in squeezed
    declared = re.findall(
        r'add_argument\(\s*"(--[a-z0-9-]+)"', (REPO_ROOT / "stages" / script).read_text()
    )
    assert declared and all(f"{option} " in shown for option in declared)


@pytest.mark.parametrize("script", STAGES)
def test_every_stage_refuses_bad_params_before_any_work(
    script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Inputs that do not exist and outputs under tmp_path: a stage that looked at its inputs
    or wrote anything before validating params.yaml would fail differently or leave files."""
    params = (REPO_ROOT / "params.yaml").read_text().replace("\nlr:", "\nlrr:")
    (tmp_path / "params.yaml").write_text(params)
    monkeypatch.chdir(tmp_path)
    options = re.findall(
        r'add_argument\(\s*"(--[a-z0-9-]+)"', (REPO_ROOT / "stages" / script).read_text()
    )
    arguments = [part for option in options for part in (option, f"missing/{option[2:]}")]
    with pytest.raises(SystemExit) as done:
        run_stage_script(script, *arguments)
    assert done.value.code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["params.yaml: missing key 'lr'; unknown key 'lrr' (did you mean 'lr'?)"]
    assert not [r for r in caplog.records if r.levelno == logging.INFO and r.name != "imgpipe"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_a_threshold_without_an_operating_point_is_one_clear_line(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    """predict and serve refuse --threshold on a model without a positive class; serve before it
    binds (its port is taken, so a serve that went on would fail at once, not hang)."""
    expected = [
        f"{tiny_onnx}: the model has no positive class (set evaluate.positive_class and rerun "
        "dvc repro); --threshold needs one"
    ]
    image = tmp_path / "image.png"
    image.write_bytes(b"not read: the model is refused first")
    model = ["--model", str(tiny_onnx), "--threshold", "0.5"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for arguments in (
            ["predict", str(image), *model],
            ["serve", *model, "--port", port, "--no-feature-log"],
        ):
            result = imgpipe(*arguments, cwd=tmp_path)
            assert result.returncode == 2 and result.stdout == "", arguments
            assert error_lines(result.stderr) == expected, arguments


def test_a_malformed_operating_point_is_one_clear_line(tiny_onnx: Path, tmp_path: Path) -> None:
    point = {"positive_class": "pneumonia", "threshold": 0.4}
    broken = with_metadata(tiny_onnx, tmp_path / "broken.onnx", operating_point=point)
    result = imgpipe("predict", str(tmp_path), "--model", str(broken), cwd=tmp_path)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"{broken}: metadata 'operating_point': positive_class 'pneumonia' is not among "
        "['left', 'right']"
    ]
