"""The README's "Your photos" path, run as written: its commands are read from README.md at test
time (the blocks marked ``<!-- your-photos -->``), in a temporary clone, on a small photo folder
put where the README says, with a randomly initialised weights file at the README's path."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml

from tests.conftest import REPO_ROOT
from tests.test_pipeline import clone_working_tree, commit_all, dvc
from tests.training.test_finetune_e2e import SHAPES, write_shapes

pytestmark = pytest.mark.slow

MARKER = "<!-- your-photos -->"


def readme_photo_commands(readme: str) -> str:
    """The shell blocks of the "Your photos" section that carry the marker, in order."""
    section = readme.split("\n## Your photos\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"{re.escape(MARKER)}\n```bash\n(.*?)```", section, flags=re.DOTALL)
    assert blocks, f"no ```bash block marked {MARKER} in README's 'Your photos'"
    return "\n".join(blocks)


def overrides(commands: str) -> dict[str, str]:
    """Every ``-S key=value`` of the commands (the later wins, as it does in the workspace)."""
    words = shlex.split(commands.replace("\\\n", " "))
    pairs = [words[i + 1] for i, word in enumerate(words) if word == "-S"]
    return dict(pair.split("=", 1) for pair in pairs)


def test_readme_commands_parse() -> None:
    """The fast half: the README block exists and names a folder, a model and a weights file."""
    settings = overrides(readme_photo_commands((REPO_ROOT / "README.md").read_text()))
    assert {"data.source", "model", "pretrained"} <= set(settings)


def test_the_readme_photo_path_trains_evaluates_and_exports(tmp_path: Path) -> None:
    commands = readme_photo_commands((REPO_ROOT / "README.md").read_text())
    settings = overrides(commands)
    repo = clone_working_tree(tmp_path / "imgpipe")
    # The README's path follows the Quickstart, whose `dvc repro` leaves the committed outputs
    # in DVC's cache; without them `dvc exp run` looks for them in the default remote, out of
    # reach here (minutes of retries). No default remote: the clone's own cache only.
    dvc(repo, "remote", "default", "--unset")
    commit_all(repo, "clone")
    write_shapes(repo / settings["data.source"], per_class=16, size=72)
    torch.manual_seed(0)
    weights = repo / settings["pretrained"]
    torch.save(timm.create_model(settings["model"]).state_dict(), weights)

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # an activated .venv
    env.pop("PYTHONPATH", None)  # the stage commands set it to the clone's src/
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", commands],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, f"{commands}\n{run.stdout}\n{run.stderr}"

    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["preprocess"]["image_size"] == int(settings["preprocess.image_size"])
    data = json.loads((repo / "metrics/data.json").read_text())
    assert sum(data["totals"].values()) == 16 * len(SHAPES)
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    assert 0 <= evaluation["accuracy"] <= 1
    assert (repo / "models/model.onnx").stat().st_size > 1_000_000  # resnet18, not the digits net
    assert (repo / f"{settings['pretrained']}.dvc").is_file()

    # finetune: head: calibrate and evaluate scored the head on the features the audit cached.
    # Without the cache they compute them afresh, and not one output byte moves.
    scored = ("metrics/calibration.json", "metrics/eval.json", "metrics/eval/predictions.csv")
    written = {path: (repo / path).read_bytes() for path in scored}
    shutil.rmtree(repo / ".dvc/tmp/imgpipe/features")
    for stage in ("calibrate", "evaluate"):
        dvc(repo, "repro", "--force", "--single-item", stage)
    assert {path: (repo / path).read_bytes() for path in scored} == written
    assert len(list((repo / ".dvc/tmp/imgpipe/features").glob("split-*.npz"))) == 2  # val, test
    # export-onnx read the backbone graph the audit exported; exported afresh, the same bytes.
    exported = (repo / "models/model.onnx").read_bytes()
    shutil.rmtree(repo / ".dvc/tmp/imgpipe/features")
    dvc(repo, "repro", "--force", "--single-item", "export-onnx")
    assert (repo / "models/model.onnx").read_bytes() == exported
