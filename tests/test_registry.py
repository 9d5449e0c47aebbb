"""The model registry: dvc.yaml's artifacts, versioned and staged with gto's git tags, fetched
back with `dvc artifacts get` by version and by stage, byte for byte."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

GTO = Path(sys.executable).parent / "gto"


def run(repo: Path, *command: str) -> str:
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def dvc(repo: Path, *args: str) -> str:
    return run(repo, sys.executable, "-m", "dvc", *args)


def project_artifacts() -> dict[str, dict[str, object]]:
    artifacts: dict[str, dict[str, object]] = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())[
        "artifacts"
    ]
    return artifacts


def test_the_artifacts_are_the_pipelines_models() -> None:
    paths = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["vars"][0]["paths"]
    artifacts = project_artifacts()
    assert artifacts["image-classifier"]["path"] == paths["onnx"]
    assert artifacts["image-classifier-int8"]["path"] == paths["int8"]
    assert all(a["type"] == "model" and a["desc"] and a["labels"] for a in artifacts.values())


@pytest.fixture
def registry(tmp_path: Path, tiny_onnx: Path) -> tuple[Path, bytes, bytes]:
    """A git+DVC repo with the project's artifacts section, a local remote, and two committed
    models: v1.0.0 (the first) and v1.1.0 (the second) registered, v1.0.0 assigned to prod."""
    repo = tmp_path / "registry"
    repo.mkdir()
    run(repo, "git", "init", "-q")
    run(repo, "git", "config", "user.email", "test@example.com")
    run(repo, "git", "config", "user.name", "test")
    dvc(repo, "init", "-q")
    dvc(repo, "remote", "add", "-d", "store", str(tmp_path / "store"))
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"artifacts": project_artifacts()}))
    model = repo / "models" / "model.onnx"
    model.parent.mkdir()
    first = tiny_onnx.read_bytes()
    second = first + b"\0"  # a different file of the same kind is all the registry needs
    for content, version in ((first, "v1.0.0"), (second, "v1.1.0")):
        model.write_bytes(content)
        dvc(repo, "add", "-q", "models/model.onnx")
        run(repo, "git", "add", "-A")
        run(repo, "git", "commit", "-q", "-m", f"model {version}")
        dvc(repo, "push", "-q")
        run(repo, str(GTO), "register", "image-classifier", "HEAD", "--version", version)
    run(repo, str(GTO), "assign", "image-classifier", "--version", "v1.0.0", "--stage", "prod")
    return repo, first, second


def test_register_assign_and_get_by_version_and_stage(
    registry: tuple[Path, bytes, bytes], tmp_path: Path
) -> None:
    repo, first, second = registry
    tags = run(repo, "git", "tag").split()
    assert tags == ["image-classifier#prod#1", "image-classifier@v1.0.0", "image-classifier@v1.1.0"]
    shutil.rmtree(repo / ".dvc" / "cache")  # what comes back comes from the remote
    for option, expected, name in (
        ("--rev=v1.0.0", first, "v1"),
        ("--rev=v1.1.0", second, "v2"),
        ("--stage=prod", first, "prod"),
    ):
        out = tmp_path / f"{name}.onnx"
        dvc(tmp_path, "artifacts", "get", str(repo), "image-classifier", option, "-o", str(out))
        assert out.read_bytes() == expected, option
    shown = run(repo, str(GTO), "show", "image-classifier@greatest", "--ref")
    assert shown.strip() == "image-classifier@v1.1.0"


def test_a_stage_tag_tells_the_deploy_workflow_what_to_ship(
    registry: tuple[Path, bytes, bytes],
) -> None:
    """deploy.yml reads artifact, version, stage and commit from `gto check-ref --json`."""
    import json

    repo, _, _ = registry
    event = json.loads(run(repo, str(GTO), "check-ref", "image-classifier#prod#1", "--json"))
    commit = run(repo, "git", "rev-list", "-n", "1", "image-classifier@v1.0.0").strip()
    assert (event["artifact"], event["version"], event["stage"], event["commit_hexsha"]) == (
        "image-classifier",
        "v1.0.0",
        "prod",
        commit,
    )
    workflow = (REPO_ROOT / ".github/workflows/deploy.yml").read_text()
    for key in ("artifact", "version", "stage", "commit_hexsha"):
        assert f"\\(.{key})" in workflow
