"""End-to-end `dvc repro` in a temporary clone on a source of patients, each with still images
and a video clip: the clips become frames, a patient's stills and frames share one split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgpipe.data.splits import load_split
from tests.data.video_clips import write_clip
from tests.test_pipeline import ALL_STAGES, clone_working_tree, commit_all, dvc, stages_run
from tests.training.test_finetune_e2e import set_yaml

pytestmark = pytest.mark.slow

PATIENTS = 16  # per class


def write_patients(root: Path) -> Path:
    """<class>/p<NN>_still<k>.png and <class>/clips/p<NN>_visit.mp4: bright vs dark classes."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("dark", "bright")):
        for patient in range(PATIENTS):
            pid = f"p{label}{patient:02d}"
            for still in range(2):
                level = 60 + 120 * label + int(rng.integers(-30, 30))
                pixels = np.clip(rng.normal(level, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
                (root / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / name / f"{pid}_still{still}.png")
            write_clip(
                root / name / "clips" / f"{pid}_visit.mp4",
                frames=12,
                fps=10,
                seed=label * 100 + patient,
            )
    (root / "bright" / "clips" / "p199_broken.mp4").write_bytes(b"\x00" * 300)
    return root


def test_repro_on_patients_with_stills_and_clips(tmp_path_factory: pytest.TempPathFactory) -> None:
    repo = clone_working_tree(tmp_path_factory.mktemp("clips-clone"))
    source = write_patients(tmp_path_factory.mktemp("patients"))
    set_yaml(
        repo / "params.yaml",
        {
            "epochs: 40 ": "epochs: 2 ",
            "batch_size: 64 ": "batch_size: 16 ",
            "batch_size: 128 ": "batch_size: 16 ",  # the audit's
            "source: builtin:mnist5k ": f"source: {source} ",
            "image_size: 28 ": "image_size: 32 ",
            "channels: 1 ": "channels: 3 ",
            "group_pattern: null ": r"group_pattern: '(p\d+)_' ",
            "frames_per_second: 1 ": "frames_per_second: 2 ",
            "sample_size: 2000 ": "sample_size: 50 ",
        },
    )
    commit_all(repo, "patients with stills and clips")
    run = dvc(repo, "repro")
    assert stages_run(run.stdout) == ALL_STAGES

    report = json.loads((repo / "metrics/data.json").read_text())
    assert report["video"] == {"clips": 2 * PATIENTS + 1, "frames": 2 * PATIENTS * 3, "skipped": 1}
    assert [e["file"] for e in report["skipped"]] == ["bright/clips/p199_broken.mp4"]
    assert sum(report["totals"].values()) == 2 * PATIENTS * (2 + 3)
    groups = report["groups"]
    assert groups["unmatched_count"] == 0 and groups["in_several_splits_count"] == 0
    assert sum(groups["per_split"].values()) == 2 * PATIENTS
    split_of: dict[str, set[str]] = {}
    frames = 0
    for split in ("train", "val", "test"):
        for file in load_split(repo / "data/processed" / split).files:
            patient = Path(file.split(".mp4/")[0]).name.split("_")[0]
            split_of.setdefault(patient, set()).add(split)
            frames += ".mp4/frame_" in file
    assert frames == 2 * PATIENTS * 3
    assert len(split_of) == 2 * PATIENTS and all(len(s) == 1 for s in split_of.values())
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    assert 0 <= evaluation["accuracy"] <= 1
    # Patient-level results: each test patient once, intervals over patients.
    test = load_split(repo / "data/processed/test")
    assert test.groups is not None and len(test.groups) == len(test)
    assert evaluation["test_groups"] == groups["per_split"]["test"] == len(set(test.groups))
    assert evaluation["group_scored"] == evaluation["test_groups"]
    assert 0 <= evaluation["group_accuracy_ci_low"] <= evaluation["group_accuracy"]
    assert evaluation["group_accuracy"] <= evaluation["group_accuracy_ci_high"] <= 1
    predictions = (repo / "metrics/eval/predictions.csv").read_text().splitlines()
    assert predictions[0].startswith("file,group,label,") and len(predictions) == len(test) + 1
    assert dvc(repo, "status").stdout.strip() == "Data and pipelines are up to date."
