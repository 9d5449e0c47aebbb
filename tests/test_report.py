"""imgpipe report / check-metrics on a temporary git+DVC repo with two commits, and the
headline's judgement against noise on synthetic prediction tables."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgpipe.cli import main
from imgpipe.errors import ImgpipeError
from imgpipe.report import (
    Change,
    SplitPredictions,
    compare_predictions,
    markdown,
    parse_audit,
    parse_predictions,
)

DVC_YAML = """\
metrics:
  - metrics.json
  - metrics/export.json
  - metrics/drift_baseline.json
plots:
  - curve.tsv:
      x: step
      y: accuracy
  - grid.png
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def write_state(
    repo: Path,
    accuracy: float,
    f1: float,
    lr: float,
    *,
    int8: str = "written",
    predictions: str | None = None,
    audit: str | None = None,
) -> None:
    metrics = {
        "accuracy": accuracy,
        "accuracy_ci_low": round(accuracy - 0.02, 6),
        "accuracy_ci_high": round(accuracy + 0.02, 6),
        "macro_f1": f1,
        "ece": 0.05 + (0.95 - accuracy),
        "best": {"val_loss": 1 - accuracy},
    }
    (repo / "metrics.json").write_text(json.dumps(metrics))
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/drift_baseline.json").write_text(
        json.dumps({"predicted_share": {"cat": accuracy / 2, "dog": 1 - accuracy / 2}})
    )
    (repo / "metrics/export.json").write_text(
        json.dumps({"int8": int8, "fp32_val_accuracy": 0.99, "int8_val_accuracy": 0.97})
    )
    (repo / "metrics/eval").mkdir(exist_ok=True)
    (repo / "metrics/eval/per_class.csv").write_text(
        f"class,precision,recall,f1,support\ncat,0.9,0.9,{f1},10\ndog,0.8,0.8,0.8,10\n"
    )
    (repo / "params.yaml").write_text(f"lr: {lr}\nepochs: 3\n")
    rows = "".join(f"{step}\t{accuracy * (step + 1) / 3:.4f}\n" for step in range(3))
    (repo / "curve.tsv").write_text("step\taccuracy\n" + rows)
    Image.new("RGB", (8, 8), (int(accuracy * 255), 0, 0)).save(repo / "grid.png")
    if predictions is not None:
        (repo / "metrics/eval/predictions.csv").write_text(predictions)
        calibration = {"temperature": 1.3, "positive_class": "dog", "threshold": 0.4}
        (repo / "metrics/calibration.json").write_text(json.dumps(calibration))
    if audit is not None:
        (repo / "metrics/audit").mkdir(exist_ok=True)
        (repo / "metrics/audit.json").write_text(audit)
        top = json.loads(audit)["top"]
        (repo / "metrics/audit/suspects.csv").write_text(
            "file,split,given,suggested,issue,score\n"
            + "".join(
                f"{t['file']},{t['split']},{t['given']},{t['suggested']},"
                f"{t['issue']},{t['score']}\n"
                for t in top
            )
        )
        Image.new("RGB", (8, 8), (0, int(accuracy * 255), 0)).save(repo / SUSPECTS_PNG)


SUSPECTS_PNG = "metrics/audit/suspects.png"


def audit_json(
    suspects: dict[str, tuple[int, int]],
    *,
    method: str = "network",
    exclude: bool = False,
    images: dict[str, int] | None = None,
) -> str:
    """A metrics/audit.json as the audit stage writes it, with ``suspects`` (label errors,
    outliers) per split."""
    images = images or {"train": 3500, "val": 500, "test": 1000}
    top = [
        {
            "file": f"1/{i:05d}.png",
            "split": "train",
            "given": "1",
            "suggested": "2",
            "issue": "label",
            "score": 0.99,
        }
        for i in range(suspects["train"][0])
    ]
    return json.dumps(
        {
            "method": method,
            "folds": 5,
            "epochs": 5 if method == "network" else None,
            "seed": 0,
            "exclude": exclude,
            "images": images,
            "label_issues": sum(label for label, _ in suspects.values()),
            "outliers": sum(outlier for _, outlier in suspects.values()),
            "suspects": {
                name: {"label": label, "outlier": outlier}
                for name, (label, outlier) in suspects.items()
            },
            "per_class": {},
            "out_of_sample_accuracy": {name: 0.97 for name in suspects},
            "excluded_from_training": suspects["train"][0] if exclude else 0,
            "top": top,
        }
    )


def make_repo(
    root: Path,
    base_predictions: str | None = None,
    head_predictions: str | None = None,
    *,
    base_audit: str | None = None,
    head_audit: str | None = None,
) -> Path:
    """A git+DVC repo whose commit is the base and whose workspace is this change; with an
    audit on either side, its suspect sheet is a plot as in the real dvc.yaml."""
    git(root, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    audited = base_audit is not None or head_audit is not None
    (root / "dvc.yaml").write_text(DVC_YAML + (f"  - {SUSPECTS_PNG}\n" if audited else ""))
    write_state(
        root, accuracy=0.90, f1=0.80, lr=0.003, predictions=base_predictions, audit=base_audit
    )
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    write_state(
        root, accuracy=0.95, f1=0.70, lr=0.0001, predictions=head_predictions, audit=head_audit
    )
    return root


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return make_repo(tmp_path)


def test_report_puts_what_moved_first_and_collapses_the_rest(repo: Path) -> None:
    assert main(["report", "--base", "HEAD", "--out", "out"]) == 0
    text = (repo / "out" / "report.md").read_text()
    lines = text.splitlines()
    headline = [
        line
        for line in lines
        if line.startswith("| accuracy")
        or line.startswith("| macro_f1")
        or line.startswith("| ece")
    ]
    # No predictions.csv on either side: no verdict, each side's interval where it has one.
    assert headline == [
        "| accuracy | 0.9 [0.88, 0.92] | 0.95 [0.93, 0.97] | +0.05 |",
        "| macro_f1 | 0.8 | 0.7 | -0.1 |",
        "| ece | 0.1 | 0.05 | -0.05 |",
    ]
    assert "| metric | base (95% CI) | this change (95% CI) | delta |" in lines
    unpaired = (
        "No test predictions on either side (metrics/eval/predictions.csv): deltas are not "
        "paired; each side's 95% interval is shown."
    )
    assert text.index("| ece") < text.index(unpaired) < text.index("### Params")
    assert text.index("| accuracy") < text.index("### Params") < text.index("<details>")
    assert "| lr | 0.003 | 0.0001 |" in text and "epochs" not in text
    sections = re.findall(r"<details>\n<summary>(.*?)</summary>(.*?)</details>", text, re.S)
    titles = [title for title, _ in sections]
    assert titles == [
        "Other metrics that moved (1)",
        "Per-class scores (2 classes)",
        "Drift baseline (predicted shares and image statistics)",
    ]
    assert "| metrics.json | best.val_loss | 0.1 | 0.05 | -0.05 |" in sections[0][1]
    assert "| cat | 0.8 | 0.7 | 0.9 | 0.9 | 10 |" in sections[1][1]
    assert "predicted_share.cat" in sections[2][1] and "not shown" not in text
    assert "![curve.tsv](plots/curve-tsv.png)" in text
    assert (repo / "out" / "plots" / "curve-tsv.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_images_of_data_stay_out_unless_asked_for(repo: Path) -> None:
    assert main(["report", "--base", "HEAD", "--out", "private"]) == 0
    text = (repo / "private" / "report.md").read_text()
    assert "grid.png" in text and "not included (privacy)" in text
    assert "![grid.png" not in text
    assert sorted(p.name for p in (repo / "private" / "plots").iterdir()) == ["curve-tsv.png"]
    assert main(["report", "--base", "HEAD", "--out", "shared", "--data-images"]) == 0
    shared = (repo / "shared" / "report.md").read_text()
    assert shared.count("![grid.png") == 2  # base and this change
    assert "not included" not in shared


def test_check_metrics_uses_the_tolerance(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-metrics", "--against", "HEAD", "--tolerance", "0.11"]) == 0
    assert main(["check-metrics", "--against", "HEAD", "--tolerance", "0.01"]) == 1
    assert "metrics.json: accuracy: 0.9 -> 0.95" in capsys.readouterr().out
    assert main(["check-metrics", "--against", "HEAD", "--tolerance", "0.06", "--key", "ece"]) == 0


def test_unknown_revision_is_a_clear_error(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["check-metrics", "--against", "no-such-rev"]) == 2
    [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error.startswith("dvc metrics diff no-such-rev")
    assert "unknown Git revision 'no-such-rev'" in error  # DVC's own words say what was wrong


def test_a_refused_int8_model_is_said_under_the_headline(repo: Path) -> None:
    main(["report", "--base", "HEAD", "--out", "kept"])
    assert "int8 model rejected" not in (repo / "kept" / "report.md").read_text()
    write_state(repo, accuracy=0.95, f1=0.70, lr=0.0001, int8="rejected")
    assert main(["report", "--base", "HEAD", "--out", "refused"]) == 0
    text = (repo / "refused" / "report.md").read_text()
    line = "**int8 model rejected**: validation accuracy 0.97 against fp32's 0.99"
    assert text.index("| ece") < text.index(line) < text.index("### Params")


CLASSES = ["cat", "dog", "owl"]
EVAL = "metrics/eval.json"


def predictions_csv(
    labels: np.ndarray,
    probabilities: np.ndarray,
    groups: list[str] | None = None,
    order: np.ndarray | None = None,
) -> str:
    """A predictions.csv as the evaluate stage writes it, rows in ``order`` when given."""
    rows = [
        f"test/{i:05d}.png,{groups[i] if groups else ''},{CLASSES[labels[i]]},"
        + ",".join(f"{p:.6f}" for p in probabilities[i])
        for i in (range(len(labels)) if order is None else order)
    ]
    return "\n".join(["file,group,label," + ",".join(f"p:{c}" for c in CLASSES), *rows]) + "\n"


def predicted(rng: np.random.Generator, labels: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Probabilities whose argmax is the label where ``right``, another class elsewhere."""
    top = np.where(right, labels, (labels + rng.integers(1, 3, len(labels))) % 3)
    probabilities = rng.random((len(labels), 3)) * 0.4
    probabilities[np.arange(len(labels)), top] = 0.5 + 0.5 * rng.random(len(labels))
    probabilities /= probabilities.sum(1, keepdims=True)
    return probabilities


def side(table: str, positive_class: str | None = "dog") -> SplitPredictions:
    return parse_predictions(table, {"positive_class": positive_class, "threshold": 0.4})


def headline_rows(text: str) -> dict[str, list[str]]:
    """The headline table's cells by metric."""
    cells = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return {row[0].strip(): [cell.strip() for cell in row] for row in cells}


HEADLINE_CHANGES = [
    Change(EVAL, "accuracy", 0.9, 0.9),
    Change(EVAL, "ece", 0.05, 0.06),
    Change(EVAL, "top5_accuracy", 1.0, 1.0),
]


def report_of(tmp_path: Path, base: SplitPredictions, head: SplitPredictions) -> str:
    return markdown(
        "main", HEADLINE_CHANGES, [], [], relative_to=tmp_path, predictions=(base, head)
    )


def test_two_equally_good_models_differ_within_noise(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 1000)
    base = predicted(rng, labels, rng.random(1000) < 0.9)
    head = predicted(rng, labels, rng.random(1000) < 0.9)  # as good, wrong on other images
    text = report_of(
        tmp_path, side(predictions_csv(labels, base)), side(predictions_csv(labels, head))
    )
    assert "| metric | base | this change | delta (95% CI) | verdict |" in text.splitlines()
    rows = headline_rows(text)
    assert rows["accuracy"][4].startswith("within noise (±"), rows["accuracy"]
    assert re.fullmatch(r"[-+]?[\d.]+ \[-[\d.]+, \+[\d.]+\]", rows["accuracy"][3])
    assert rows["ece"][4].startswith("within noise (±")
    assert rows["top5_accuracy"] == ["top5_accuracy", "1", "1", "0", ""]  # no paired delta
    assert "not paired" not in text


def test_a_clearly_worse_change_is_marked_with_its_rows_in_another_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 1000)
    base = predicted(rng, labels, rng.random(1000) < 0.9)
    head = base.copy()
    # 15 right answers lost: 1.5 points, too few for two separate intervals of 1000 images
    # (about ±1.9 points each) to tell from chance, but not for a paired one.
    flipped = np.flatnonzero(base.argmax(1) == labels)[:15]
    head[flipped] = np.roll(head[flipped], 1, axis=1)
    shuffled = rng.permutation(1000)  # the head's rows in another order: matched by file
    text = report_of(
        tmp_path,
        side(predictions_csv(labels, base)),
        side(predictions_csv(labels, head, order=shuffled)),
    )
    accuracy = headline_rows(text)["accuracy"]
    assert accuracy[3].startswith("-0.0150 [-0.0") and accuracy[4] == "**worse**"


def test_a_changed_split_shows_each_sides_interval_and_says_why(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 1200)
    probabilities = predicted(rng, labels, rng.random(1200) < 0.99)
    base = side(predictions_csv(labels[:1000], probabilities[:1000]))
    head = side(predictions_csv(labels, probabilities))
    changes = [
        Change(EVAL, "accuracy", 0.988, 0.99),
        Change(EVAL, "accuracy_ci_low", 0.981, 0.984),
        Change(EVAL, "accuracy_ci_high", 0.994, 0.995),
        Change(EVAL, "macro_f1", 0.98, 0.985),
    ]
    text = markdown("main", changes, [], [], relative_to=tmp_path, predictions=(base, head))
    rows = headline_rows(text)
    assert rows["accuracy"] == ["accuracy", "0.988 [0.981, 0.994]", "0.99 [0.984, 0.995]", "+0.002"]
    assert rows["macro_f1"] == ["macro_f1", "0.98", "0.985", "+0.005"]  # no interval given
    line = (
        "The test split changed (1000 -> 1200 images): deltas are not paired; each side's 95% "
        "interval is shown."
    )
    assert text.index("| macro_f1") < text.index(line) < text.index("### Params")
    assert "Other metrics that moved" not in text  # the intervals belong to the headline
    renamed = side(predictions_csv(labels[:1000], probabilities[:1000]).replace("00007", "x"))
    assert compare_predictions(base, renamed)[1].startswith("The test split changed (1000 -> 1000")
    assert compare_predictions(None, head) == (
        {},
        "No test predictions on the base (metrics/eval/predictions.csv): deltas are not paired; "
        "each side's 95% interval is shown.",
    )


def test_the_tables_operating_points_and_groups_are_used() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 600)
    groups = [f"clip{i // 10}" for i in range(600)]
    # The models disagree on whole clips: 60 outcomes, not 600.
    base = predicted(rng, labels, np.repeat(rng.random(60) < 0.85, 10))
    head = predicted(rng, labels, np.repeat(rng.random(60) < 0.85, 10))
    deltas, unpaired = compare_predictions(
        side(predictions_csv(labels, base, groups)), side(predictions_csv(labels, head, groups))
    )
    assert unpaired == "" and {"sensitivity", "specificity"} <= set(deltas)
    ignored, _ = compare_predictions(
        side(predictions_csv(labels, base)), side(predictions_csv(labels, head))
    )
    grouped, alone = deltas["accuracy"], ignored["accuracy"]
    assert grouped.delta == alone.delta
    assert grouped.high - grouped.low > 2 * (alone.high - alone.low)
    no_point, _ = compare_predictions(
        side(predictions_csv(labels, base)), side(predictions_csv(labels, head), "zebra")
    )
    assert "sensitivity" not in no_point and "accuracy" in no_point


def test_a_malformed_predictions_table_is_a_clear_error() -> None:
    with pytest.raises(ImgpipeError, match="labels \\['fox'\\] are not among its classes"):
        parse_predictions("file,group,label,p:cat,p:dog\na.png,,fox,0.5,0.5\n")
    with pytest.raises(ImgpipeError, match="not one probability per class"):
        parse_predictions("file,group,label,p:cat,p:dog\na.png,,cat,0.5\n")


def test_a_malformed_calibration_file_is_named() -> None:
    from imgpipe.report import _parsed

    table = "file,group,label,p:cat,p:dog\na.png,,cat,0.5,0.5\n"
    with pytest.raises(ImgpipeError, match=r"^HEAD:metrics/calibration.json: not JSON: "):
        _parsed(table, "{oops", where="HEAD:metrics/eval/predictions.csv")


def test_the_report_pairs_the_committed_predictions_with_the_workspaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 400)
    right = np.arange(400) < 360  # 0.90, as metrics.json says
    base = predicted(rng, labels, right)
    head = base.copy()
    head[360:380] = predicted(rng, labels[360:380], np.ones(20, bool))  # 0.95
    make_repo(tmp_path, predictions_csv(labels, base), predictions_csv(labels, head))
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--base", "HEAD", "--out", "out"]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    rows = headline_rows(text)
    assert rows["accuracy"][:3] == ["accuracy", "0.9", "0.95"]
    assert rows["accuracy"][3].startswith("+0.050 [+0.0") and rows["accuracy"][4] == "better"


def test_the_label_audit_is_counted_under_the_headline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = audit_json({"train": (6, 3), "val": (0, 0), "test": (1, 1)})
    head = audit_json({"train": (8, 3), "val": (0, 1), "test": (1, 1)}, exclude=True)
    make_repo(tmp_path, base_audit=base, head_audit=head)
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--base", "HEAD", "--out", "out"]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    lines = text.splitlines()
    start = lines.index("| split | images | suspected label errors | outliers |")
    assert lines[start + 2 : start + 6] == [
        "| train | 3500 | 8 (+2) | 3 (0) |",
        "| val | 500 | 0 (0) | 1 (+1) |",
        "| test | 1000 | 1 (0) | 1 (0) |",
        "| all | 5000 | 9 (+2) | 5 (+1) |",
    ]
    assert text.index("| ece") < text.index("### Label audit") < text.index("### Params")
    assert (
        "Method: 5-fold out-of-sample probabilities from the configured network trained 5 "
        "epochs per fold." in lines
    )
    assert "`audit.exclude` is on: 8 training images suspected of a wrong label" in text
    assert "`metrics/audit/suspects.csv`" in text
    assert "00000.png" not in text and "No audit on base" not in text  # counts, no names
    # The suspect sheet is the user's images: named as withheld, not copied.
    [withheld] = [line for line in lines if "not included (privacy)" in line]
    assert f"![{SUSPECTS_PNG}" not in text and SUSPECTS_PNG in withheld
    assert sorted(p.name for p in (tmp_path / "out" / "plots").iterdir()) == ["curve-tsv.png"]
    assert main(["report", "--base", "HEAD", "--out", "shared", "--data-images"]) == 0
    assert (tmp_path / "shared" / "report.md").read_text().count(f"![{SUSPECTS_PNG} (") == 2


def test_an_audit_new_in_this_change_says_the_base_had_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = audit_json({"train": (8, 3), "val": (0, 1), "test": (1, 1)}, method="features")
    make_repo(tmp_path, head_audit=head)
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--base", "HEAD", "--out", "out"]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| train | 3500 | 8 | 3 |" in text and "| all | 5000 | 9 | 5 |" in text
    assert "No audit on base: counts without deltas." in text
    assert "a logistic regression on the frozen pretrained features." in text
    assert "audit.exclude" not in text
    assert f"![{SUSPECTS_PNG}" not in text and "suspects-" not in text


def test_the_audit_section_follows_the_head(tmp_path: Path) -> None:
    network = parse_audit(audit_json({"train": (8, 3), "test": (1, 1)}))
    features = parse_audit(audit_json({"train": (2, 3), "test": (1, 1)}, method="features"))
    gone = markdown("main", HEADLINE_CHANGES, [], [], relative_to=tmp_path, audit=(network, None))
    assert "Label audit" not in gone  # an older revision, or the stage not run
    text = markdown(
        "main", HEADLINE_CHANGES, [], [], relative_to=tmp_path, audit=(network, features)
    )
    assert "| train | 3500 | 2 (-6) | 3 (0) |" in text
    assert "The base's audit used 5-fold out-of-sample probabilities from the configured" in text


def test_a_malformed_audit_is_named_in_one_line(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (repo / "metrics/audit.json").write_text("{oops")
    assert main(["report", "--base", "HEAD", "--out", "out"]) == 2
    [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error.startswith("metrics/audit.json: not JSON: ") and "\n" not in error
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "malformed")
    (repo / "metrics/audit.json").write_text(audit_json({"train": (1, 0)}))
    caplog.clear()
    assert main(["report", "--base", "HEAD", "--out", "out"]) == 2
    [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error.startswith("HEAD:metrics/audit.json: not JSON: ")
    wrong = json.loads(audit_json({"train": (1, 0)}))
    wrong["suspects"]["train"]["label"] = "x"
    with pytest.raises(ImgpipeError, match=r"^metrics/audit.json: suspects.train.label is not a"):
        parse_audit(json.dumps(wrong))
    with pytest.raises(ImgpipeError, match=r"^metrics/audit.json: not a JSON object$"):
        parse_audit("[]")
