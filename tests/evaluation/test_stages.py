"""The calibrate and evaluate stage scripts on a small stage folder: calibration, the operating
point chosen on validation and applied to test, intervals, groups, a target the validation
split cannot support, and a head model's logits from the frozen features."""

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgpipe.data.split_writer import write_labels_and_meta
from imgpipe.evaluation.bootstrap import confidence_intervals
from imgpipe.training.model import Classifier, ModelMeta, save_checkpoint
from tests.conftest import REPO_ROOT, make_split
from tests.test_cli import run_stage_script


@pytest.fixture
def stage_folder(
    tiny_model: tuple[Classifier, ModelMeta], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A checkpoint and val/test splits (the test split in 12 patients of 5 images)."""
    model, meta = tiny_model
    save_checkpoint(tmp_path / "model.pt", model, meta)
    for name, split, groups in (
        ("val", make_split(40, seed=2), None),
        ("test", make_split(30, seed=3), [f"patient{i // 5}" for i in range(60)]),
    ):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "images.npy", split.images)
        write_labels_and_meta(
            tmp_path / name, split.labels.tolist(), split.classes, split.files, groups
        )
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_both(*changes: tuple[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    params = Path("params.yaml")
    for old, new in changes:
        assert old in params.read_text()
        params.write_text(params.read_text().replace(old, new))
    run_stage_script(
        "calibrate.py",
        *("--model", "model.pt", "--val", "val", "--features", "features", "--out", "cal.json"),
    )
    run_stage_script(
        "evaluate.py",
        *("--model", "model.pt", "--calibration", "cal.json", "--test", "test"),
        *("--features", "features", "--metrics", "eval.json", "--plots", "eval"),
    )
    return json.loads(Path("cal.json").read_text()), json.loads(Path("eval.json").read_text())


def test_the_threshold_is_chosen_on_validation_and_applied_to_test(stage_folder: Path) -> None:
    fitted, evaluation = run_both(
        ("positive_class: null ", "positive_class: right "),
        ("target_sensitivity: null ", "target_sensitivity: 0.9 "),
    )
    assert fitted["temperature"] > 0 and fitted["val_images"] == 80
    assert fitted["positive_class"] == "right" and fitted["val_positives"] == 40
    assert fitted["val_sensitivity"] >= 0.9
    assert evaluation["threshold"] == fitted["threshold"]
    assert evaluation["temperature"] == fitted["temperature"]
    rows = (stage_folder / "eval/predictions.csv").read_text().splitlines()[1:]
    right = np.array([float(row.split(",")[4]) for row in rows])
    labels = np.repeat([0, 1], 30)
    called = right >= fitted["threshold"]
    assert evaluation["sensitivity"] == pytest.approx(called[labels == 1].mean(), abs=1e-6)
    assert evaluation["specificity"] == pytest.approx((~called)[labels == 0].mean(), abs=1e-6)
    for name in ("accuracy", "macro_f1", "ece", "sensitivity", "specificity", "ppv", "npv"):
        assert evaluation[f"{name}_ci_low"] <= evaluation[name] <= evaluation[f"{name}_ci_high"]
    # The test split's 12 patients: scored once each, intervals over patients.
    assert evaluation["test_groups"] == evaluation["group_scored"] == 12
    assert "group_sensitivity_ci_low" in evaluation
    assert rows[0].split(",")[1] == "patient0"
    # Image-level intervals resample whole patients, not images.
    probabilities = np.array([[float(p) for p in row.split(",")[3:]] for row in rows])
    patients = [row.split(",")[1] for row in rows]
    by_patient = confidence_intervals(labels, probabilities, patients)
    by_image = confidence_intervals(labels, probabilities)
    assert by_patient["accuracy"] != by_image["accuracy"]
    assert (evaluation["accuracy_ci_low"], evaluation["accuracy_ci_high"]) == by_patient["accuracy"]


def test_an_unreachable_target_is_a_warning_and_a_note_not_a_traceback(
    stage_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    fitted, evaluation = run_both(
        ("positive_class: null ", "positive_class: right "),
        ("target_sensitivity: null ", "target_sensitivity: 0.99 "),
    )
    assert fitted["threshold"] is None
    expected = (
        "the validation split has 40 positives of 'right'; a sensitivity of 0.99 needs at least "
        "100 to be told apart from chance: no threshold chosen (more validation data, or a "
        "lower target)"
    )
    assert fitted["operating_point_note"] == evaluation["operating_point_note"] == expected
    assert "sensitivity" not in evaluation and "threshold" not in evaluation
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings.count(f"no operating point: {expected}") == 2  # calibrate and evaluate


def test_calibration_off_leaves_the_probabilities_as_they_were(stage_folder: Path) -> None:
    fitted, evaluation = run_both(("calibration: temperature ", "calibration: none "))
    assert fitted["temperature"] == evaluation["temperature"] == 1.0
    assert evaluation["ece"] == evaluation["ece_uncalibrated"]
    assert fitted["positive_class"] is None and "threshold" not in evaluation


def test_a_positive_class_that_is_not_a_class_stops_calibrate_in_one_line(
    stage_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(SystemExit) as done:
        run_both(
            ("positive_class: null ", "positive_class: pneumonia "),
            ("target_sensitivity: null ", "target_sensitivity: 0.9 "),
        )
    assert done.value.code == 1
    [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error == (
        "evaluate.positive_class 'pneumonia' is not a class of this data (classes: left, right)"
    )
    assert not Path("cal.json").exists()


def test_a_head_models_stages_score_its_classifier_on_the_cached_features(
    stage_folder: Path, tiny_model: tuple[Classifier, ModelMeta]
) -> None:
    whole_fitted, whole = run_both()
    assert not Path("features").exists()  # a fine-tuned backbone: the whole network ran
    model, meta = tiny_model
    save_checkpoint(Path("model.pt"), model, replace(meta, training={"finetune": "head"}))
    fitted, evaluation = run_both()
    assert len(list(Path("features").glob("split-*.npz"))) == 2  # val's and test's features
    assert fitted["temperature"] == pytest.approx(whole_fitted["temperature"], abs=1e-3)
    assert evaluation["accuracy"] == whole["accuracy"]
    assert evaluation["ece"] == pytest.approx(whole["ece"], abs=1e-3)
    # From the entries now: bit-identical outputs.
    written = Path("eval.json").read_bytes(), Path("eval/predictions.csv").read_bytes()
    run_both()
    assert (Path("eval.json").read_bytes(), Path("eval/predictions.csv").read_bytes()) == written
