import csv
from pathlib import Path

import torch
import yaml
from PIL import Image

from imgpipe.evaluation.metrics import score_split
from imgpipe.evaluation.plots import write_plots
from imgpipe.training.inference import predict_split
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
    probabilities = predict_split(model, test, 8, torch.device("cpu")).numpy()
    _, per_class = score_split(test, probabilities)
    write_plots(tmp_path / "eval", model, test, probabilities, per_class)

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
    assert sum(int(row["images"]) for row in calibration) == len(test)
    assert {row["class"] for row in rows(tmp_path / "eval/roc.csv")} <= set(test.classes)
    curve = rows(tmp_path / "eval/precision_recall.csv")
    assert len(curve) == 101 * len({row["class"] for row in curve})
