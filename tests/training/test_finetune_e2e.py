"""End-to-end fine-tuning of a small RGB dataset in a temporary clone: a pretrained weights
file the test saves itself (tracked with `dvc add`), `dvc exp run` with the transfer-learning
settings, and a queued sweep (which sees only what git and DVC track)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image, ImageDraw

from tests.test_pipeline import clone_working_tree, commit_all, dvc, git, stages_run

pytestmark = pytest.mark.slow

SHAPES = ("circle", "square", "triangle")


def write_shapes(root: Path, per_class: int = 40, size: int = 80, seed: int = 0) -> Path:
    """Coloured shapes on noisy backgrounds, at random places and sizes: learnable in a few
    epochs, but not by one pixel's value."""
    rng = np.random.default_rng(seed)
    for label, shape in enumerate(SHAPES):
        (root / shape).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            draw = ImageDraw.Draw(image)
            radius = int(rng.integers(14, 26))
            x, y = rng.integers(radius, size - radius, 2)
            colour = [int(c) for c in rng.integers(60, 140, 3)]
            colour[label] = 240  # a tint per class helps, the shape decides
            box = (x - radius, y - radius, x + radius, y + radius)
            if shape == "circle":
                draw.ellipse(box, fill=tuple(colour))
            elif shape == "square":
                draw.rectangle(box, fill=tuple(colour))
            else:
                draw.polygon(
                    [(x, y - radius), (x - radius, y + radius), (x + radius, y + radius)],
                    fill=tuple(colour),
                )
            image.save(root / shape / f"{index:03d}.jpg", quality=92)
    return root


def set_yaml(path: Path, replacements: dict[str, str]) -> None:
    text = path.read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)


@pytest.fixture(scope="module")
def photos_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = clone_working_tree(tmp_path_factory.mktemp("photos-clone"))
    photos = write_shapes(tmp_path_factory.mktemp("photos"))
    torch.manual_seed(3)
    torch.save(
        timm.create_model("test_resnet", num_classes=1000).state_dict(),
        repo / "weights" / "pretrained.pth",
    )
    set_yaml(
        repo / "params.yaml",
        {
            "model: test_resnet ": "model: test_resnet ",
            "pretrained: false ": "pretrained: weights/pretrained.pth ",
            "epochs: 40 ": "epochs: 12 ",
            "batch_size: 64 ": "batch_size: 16 ",
            "batch_size: 128 ": "batch_size: 16 ",  # the audit's
            "hflip: false ": "hflip: true ",
            "source: builtin:mnist5k ": f"source: {photos} ",
            "image_size: 28 ": "image_size: 64 ",
            "channels: 1 ": "channels: 3 ",
            "val_fraction: 0.1 ": "val_fraction: 0.2 ",
            "tta: none ": "tta: hflip ",
            "sample_size: 2000 ": "sample_size: 50 ",
        },
    )
    dvc(repo, "add", "weights/pretrained.pth")  # before `git add`: DVC tracks it, git its .dvc
    git(repo, "add", "-A")
    commit_all(repo, "shapes, pretrained weights tracked by DVC")
    dvc(repo, "repro")
    commit_all(repo, "reproduced")
    return repo


def test_experiment_with_the_transfer_settings_learns_and_writes_every_metric(
    photos_repo: Path,
) -> None:
    settings = ["freeze_epochs=2", "layer_decay=0.75", "mixup=0.2", "augment.policy=randaugment"]
    run = dvc(photos_repo, "exp", "run", *[f"-S{s}" for s in settings], "--name", "transfer")
    assert stages_run(run.stdout) == {
        "train",
        "calibrate",
        "evaluate",
        "export-onnx",
        "drift-baseline",
    }
    assert "epoch 3: 0 parameter tensors frozen" in run.stdout + run.stderr  # head first
    evaluation = json.loads((photos_repo / "metrics/eval.json").read_text())
    headline = {
        "accuracy",
        "macro_f1",
        "weighted_f1",
        "ece",
        "macro_roc_auc",
        "macro_average_precision",
        "tta_accuracy",
        "tta_macro_f1",
    }
    assert set(evaluation) >= headline
    assert evaluation["accuracy"] >= 0.7  # three shapes: chance is 0.33
    trained = json.loads((photos_repo / "metrics/train/metrics.json").read_text())
    assert trained["kept"]["val_accuracy"] >= 0.7
    with (photos_repo / "metrics/eval/per_class.csv").open() as handle:
        assert [row["class"] for row in csv.DictReader(handle)] == sorted(SHAPES)
    for picture in ("misclassified.png", "gradcam.png"):
        assert Image.open(photos_repo / "metrics/eval" / picture).size[0] > 0
    assert (
        json.loads((photos_repo / "metrics/export.json").read_text())["prediction_agreement"] == 1
    )
    dvc(photos_repo, "exp", "apply", "transfer")  # leaves the workspace as the experiment
    git(photos_repo, "checkout", "--", ".")
    dvc(photos_repo, "checkout", "--force")


def test_a_queued_sweep_with_a_local_weights_file_runs_every_point(photos_repo: Path) -> None:
    dvc(photos_repo, "exp", "run", "--queue", "-S", "lr=1e-3,3e-3", "-S", "epochs=3")
    dvc(photos_repo, "queue", "start", "-j", "1")
    deadline = time.monotonic() + 600
    while "Queued" in (status := dvc(photos_repo, "queue", "status").stdout) or "Running" in status:
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert "Failed" not in status, dvc(photos_repo, "queue", "logs", status.split()[4]).stdout
    shown = json.loads(dvc(photos_repo, "exp", "show", "--json").stdout)
    finished = [
        exp["revs"][0]["data"]
        for baseline in shown
        for exp in (baseline.get("experiments") or [])
        if exp["revs"][0]["data"]["params"]["params.yaml"]["data"]["epochs"] == 3
    ]
    assert sorted(d["params"]["params.yaml"]["data"]["lr"] for d in finished) == [1e-3, 3e-3]
    for data in finished:
        assert data["metrics"]["metrics/eval.json"]["data"]["accuracy"] > 0.34
