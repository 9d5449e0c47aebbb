"""The audit stage in a temporary clone, on the digits default with 2% of the labels wrong:
the images are moved to another class folder, as a volunteer's mistake would put them. The
audit must find them; with audit.exclude, train leaves out the training ones and only those."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.test_pipeline import clone_working_tree, commit_all, dvc, stages_run
from tests.training.test_finetune_e2e import set_yaml

pytestmark = pytest.mark.slow

FLIPPED_SHARE = 0.02


def mislabelled_copy(raw: Path, destination: Path, seed: int = 0) -> dict[str, str]:
    """Copy the ImageFolder ``raw`` with 2% of its images moved to another class folder at
    random; returns each one's new name (``class/file``, as the audit names files) and the
    class it came from."""
    shutil.copytree(raw, destination)
    files = sorted(destination.glob("*/*.png"))
    classes = sorted(p.name for p in destination.iterdir())
    rng = np.random.default_rng(seed)
    moved = {}
    for index in rng.choice(len(files), round(FLIPPED_SHARE * len(files)), replace=False):
        source = files[index]
        others = [name for name in classes if name != source.parent.name]
        target = destination / others[rng.integers(len(others))] / source.name
        source.rename(target)
        moved[f"{target.parent.name}/{target.name}"] = source.parent.name
    return moved


@pytest.fixture(scope="module")
def noisy_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A clone whose source is the digits with 2% moved, reproduced up to the audit."""
    repo = clone_working_tree(tmp_path_factory.mktemp("audit-clone"))
    dvc(repo, "repro", "download")
    noisy = tmp_path_factory.mktemp("noisy") / "digits"
    moved = mislabelled_copy(repo / "data/raw", noisy)
    set_yaml(repo / "params.yaml", {"source: builtin:mnist5k": f"source: {noisy}"})
    commit_all(repo, "a noisy source")
    ran = dvc(repo, "repro", "audit")
    assert stages_run(ran.stdout) == {"download", "preprocess", "audit"}
    return repo, moved


def suspects_of(repo: Path) -> list[dict[str, str]]:
    with (repo / "metrics/audit/suspects.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_the_moved_images_are_found(noisy_repo: tuple[Path, dict[str, str]]) -> None:
    repo, moved = noisy_repo
    flagged = {row["file"] for row in suspects_of(repo) if "label" in row["issue"]}
    recall = len(flagged & set(moved)) / len(moved)
    precision = len(flagged & set(moved)) / len(flagged)
    print(f"moved {len(moved)}, flagged {len(flagged)}: recall {recall:.3f}, {precision=:.3f}")
    assert recall >= 0.8 and precision >= 0.5
    summary = json.loads((repo / "metrics/audit.json").read_text())
    assert summary["method"] == "network" and summary["label_issues"] == len(flagged)
    assert sum(split["label"] for split in summary["suspects"].values()) == len(flagged)
    assert summary["top"][0]["issue"].startswith("label")
    found = [row for row in suspects_of(repo) if row["file"] in moved and "label" in row["issue"]]
    suggested_back = [row["suggested"] == moved[row["file"]] for row in found]
    assert np.mean(suggested_back) >= 0.9  # the suggestion is the folder it came from
    assert (repo / "metrics/audit/suspects.png").stat().st_size > 1000
    assert json.loads((repo / "metrics/audit/excluded.json").read_text()) == {
        "exclude": False,
        "files": [],
    }


def test_exclude_drops_exactly_the_training_suspects(
    noisy_repo: tuple[Path, dict[str, str]],
) -> None:
    repo, _ = noisy_repo
    text = (repo / "params.yaml").read_text()
    text = re.sub(r"(?m)^epochs: \d+", "epochs: 2", text)
    text = re.sub(r"(?m)^  exclude: false", "  exclude: true", text)
    (repo / "params.yaml").write_text(text)
    ran = dvc(repo, "repro", "train")
    assert stages_run(ran.stdout) == {"audit", "train"}
    training_suspects = {
        row["file"]
        for row in suspects_of(repo)
        if row["split"] == "train" and "label" in row["issue"]
    }
    excluded = json.loads((repo / "metrics/audit/excluded.json").read_text())
    assert excluded == {"exclude": True, "files": sorted(training_suspects)}
    assert training_suspects  # the moved images put some in the training split
    summary = json.loads((repo / "metrics/train/metrics.json").read_text())
    assert summary["audit_excluded"] == len(training_suspects)
    assert json.loads((repo / "metrics/audit.json").read_text())["excluded_from_training"] == len(
        training_suspects
    )
    assert f"left out {len(training_suspects)} training images" in ran.stdout + ran.stderr
