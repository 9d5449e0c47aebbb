"""What leaves a team's machines by default: no usage reports from DVC or onnxruntime (teams
train on patients' images, often where nothing may call out)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import yaml
from onnx import TensorProto, helper

from tests.conftest import REPO_ROOT


def clean_env(home: Path) -> dict[str, str]:
    """A user's environment, not this one: no opt-out variable (conftest and imgpipe set them in
    this process) and no CI marker (onnxruntime keeps quiet under CI=true or GITHUB_ACTIONS), with
    the home folder, caches and temporary files in ``home`` so that what a run writes there can
    be listed."""
    for name in ("tmp", "cache"):
        (home / name).mkdir(parents=True)
    return {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO_ROOT / "src"),
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "XDG_CACHE_HOME": str(home / "cache"),
    }


def written(home: Path) -> list[str]:
    return sorted(str(path.relative_to(home)) for path in home.rglob("*") if path.is_file())


def reports_written_by_dvc(repo: Path, home: Path, *args: str) -> list[str]:
    """Run a read-only dvc command in ``repo`` with analytics left to the config (DVC writes each
    usage report to a temporary file before its daemon sends it)."""
    env = clean_env(home)
    subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, env=env, check=True, capture_output=True
    )
    return written(home)


def test_dvc_commands_in_a_clone_send_no_usage_report(tmp_path: Path) -> None:
    # (With pip's DVC 3.67 on Python 3.11 the daemon that would send the report dies on start-up,
    # leaving one file in /tmp per command: 2,658 on our machine over two days of test runs.)
    assert reports_written_by_dvc(REPO_ROOT, tmp_path / "repo", "config", "core.remote") == []


def test_a_repository_without_the_setting_writes_a_report(tmp_path: Path) -> None:
    """The check above can fail: a fresh `dvc init` repository does write one."""
    bare = tmp_path / "bare"
    bare.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=bare, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=bare, check=True)
    reports = reports_written_by_dvc(bare, tmp_path / "bare-home", "config", "--list")
    assert len(reports) == 1 and reports[0].startswith("tmp/"), reports


def files_onnxruntime_writes(home: Path, model: Path, first_import: str) -> list[str]:
    """Open an onnxruntime session on ``model`` in a new process whose first import is
    ``first_import``, and list what it wrote: 1DS telemetry keeps a device id and its queue of
    events under the cache folder, and a session file in the temporary one."""
    code = (
        f"import {first_import}\n"
        "import onnxruntime\n"
        f"onnxruntime.InferenceSession({str(model)!r}, providers=['CPUExecutionProvider'])\n"
    )
    env = clean_env(home)
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    return written(home)


def identity_model(path: Path) -> Path:
    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [value], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    onnx.save(model, path)
    return path


def test_onnxruntime_queues_no_telemetry_under_imgpipe(tmp_path: Path) -> None:
    model = identity_model(tmp_path / "model.onnx")
    # imgpipe.runtime.onnx_model is what the server and the CLI load models with
    assert files_onnxruntime_writes(tmp_path / "home", model, "imgpipe.runtime.onnx_model") == []


def test_onnxruntime_alone_does_queue_telemetry(tmp_path: Path) -> None:
    """The check above can fail: without imgpipe, onnxruntime writes its telemetry files (if a
    later onnxruntime stops, this says so, and the opt-out may need another look)."""
    model = identity_model(tmp_path / "model.onnx")
    files = files_onnxruntime_writes(tmp_path / "home", model, "sys")
    assert any(name.endswith("deviceid") for name in files), files


def test_every_workflow_that_runs_cml_turns_its_telemetry_off() -> None:
    """cml's usage event carries an id derived from the PR author's GitHub account."""
    workflows = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))
    running_cml = [path for path in workflows if re.search(r"^\s*cml ", path.read_text(), re.M)]
    assert running_cml, "no workflow runs cml: this check has nothing left to hold"
    for path in running_cml:
        env = yaml.safe_load(path.read_text()).get("env", {})
        assert env.get("ITERATIVE_DO_NOT_TRACK") == "1", path.name
