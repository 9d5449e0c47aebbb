import csv
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from imgpipe.evaluation.bootstrap import OperatingPoint
from imgpipe.evaluation.calibration import softmax
from imgpipe.evaluation.metrics import score_split
from imgpipe.evaluation.plots import write_plots
from imgpipe.training.inference import predict_logits
from imgpipe.training.model import Classifier, ModelMeta
from tests.conftest import REPO_ROOT, make_split


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_write_plots_writes_what_dvc_yaml_declares(
    tiny_model: tuple[Classifier, ModelMeta], tmp_path: Path
) -> None:
    model, _ = tiny_model
    test = make_split(4, seed=3)
    logits = predict_logits(model, test, 8, torch.device("cpu")).numpy()
    probabilities, uncalibrated = softmax(logits, 0.5), softmax(logits)
    _, per_class = score_split(test.labels, probabilities, test.classes)
    point = OperatingPoint(1, 0.5)
    write_plots(
        tmp_path / "eval",
        model,
        test,
        probabilities,
        per_class,
        uncalibrated=uncalibrated,
        point=point,
    )

    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["evaluate"]
    declared = [next(iter(e)) if isinstance(e, dict) else e for e in stage["plots"] + stage["outs"]]
    folder = {Path(path).name for path in declared if path.startswith("metrics/eval/")}
    assert {path.name for path in (tmp_path / "eval").iterdir()} == folder
    assert rows(tmp_path / "eval/per_class.csv") == [
        {name: str(value) for name, value in row.items()} for row in per_class
    ]
    confusion = rows(tmp_path / "eval/confusion.csv")
    predicted = probabilities.argmax(1)
    assert [row["predicted"] for row in confusion] == [test.classes[i] for i in predicted]
    wrong = rows(tmp_path / "eval/misclassified.csv")
    assert len(wrong) == int((predicted != test.labels).sum())
    for picture in ("misclassified.png", "gradcam.png"):
        assert Image.open(tmp_path / "eval" / picture).format == "PNG"
    calibration = rows(tmp_path / "eval/calibration.csv")
    for kind in ("calibrated", "uncalibrated"):
        shown = [row for row in calibration if row["probabilities"] == kind]
        assert sum(int(row["images"]) for row in shown) == len(test)
    roc = rows(tmp_path / "eval/roc.csv")
    marker = f"operating point ({test.classes[1]} >= 0.5)"
    assert {row["class"] for row in roc} <= {*test.classes, marker}
    called = probabilities[:, 1] >= 0.5
    tpr = round(float(called[test.labels == 1].mean()), 6)
    fpr = round(float(called[test.labels != 1].mean()), 6)
    assert [(float(r["fpr"]), float(r["tpr"])) for r in roc if r["class"] == marker] == [
        (0.0, tpr),
        (fpr, tpr),
        (fpr, 0.0),
    ]
    predictions = rows(tmp_path / "eval/predictions.csv")
    assert list(predictions[0]) == ["file", "group", "label", *(f"p:{c}" for c in test.classes)]
    assert [row["file"] for row in predictions] == test.files
    assert [row["label"] for row in predictions] == [test.classes[i] for i in test.labels]
    stored = np.array([[float(row[f"p:{c}"]) for c in test.classes] for row in predictions])
    np.testing.assert_allclose(stored, probabilities, atol=5e-7)
    curve = rows(tmp_path / "eval/precision_recall.csv")
    assert len(curve) == 101 * len({row["class"] for row in curve})
