"""Pull-request reports and metric checks, built on DVC's own diffs.

``imgpipe report`` turns ``dvc metrics diff``, ``dvc params diff`` and ``dvc plots diff`` against
a base revision into markdown with the plots rendered to PNG (vl-convert), ready for a PR
comment. Headline changes are judged against noise: both revisions' test predictions are paired
image by image and the difference gets a bootstrap interval; the label audit's counts follow.
``imgpipe check-metrics`` fails when reproduced metrics drift from a revision's.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgpipe.errors import ImgpipeError
from imgpipe.evaluation.bootstrap import (
    LOWER_IS_BETTER,
    OperatingPoint,
    PairedDelta,
    paired_deltas,
)
from imgpipe.io import atomic_path


@dataclass(frozen=True)
class Change:
    file: str
    key: str
    old: Any
    new: Any

    @property
    def delta(self) -> float | None:
        numbers = (int, float)
        if isinstance(self.old, numbers) and isinstance(self.new, numbers):
            return float(self.new) - float(self.old)
        return None


def dvc_json(repo: Path, *args: str) -> Any:
    """Run a DVC command with ``--json`` in ``repo`` and parse what it prints."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args, "--json"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ImgpipeError(f"dvc {' '.join(args)} failed: {result.stderr.strip()[-500:]}")
    return json.loads(result.stdout or "{}")


def changes(diff: dict[str, dict[str, dict[str, Any]]]) -> list[Change]:
    """Flatten DVC's ``{file: {key: {old, new, diff}}}`` diff into rows, file and key sorted."""
    return [
        Change(file, key, values.get("old"), values.get("new"))
        for file, keys in sorted(diff.items())
        for key, values in sorted(keys.items())
    ]


def metric_changes(repo: Path, base: str) -> list[Change]:
    return changes(dvc_json(repo, "metrics", "diff", base, "--all"))


def param_changes(repo: Path, base: str) -> list[Change]:
    return changes(dvc_json(repo, "params", "diff", base))


def render_plots(
    repo: Path, base: str, out: Path, *, data_images: bool = False
) -> tuple[list[tuple[str, Path]], list[str]]:
    """Every DVC plot, base revision against the workspace, as a PNG in ``out``: Vega plots
    (curves, matrices: aggregates) rendered; image plots (the misclassified and Grad-CAM grids
    and the audit's suspect sheet, all made of the user's images) copied once per revision only
    with ``data_images``: judged by DVC's plot type, not by name, so a new picture plot is held
    back too. Returns the rendered plots and the names of the image plots left out."""
    import vl_convert

    out.mkdir(parents=True, exist_ok=True)
    rendered, withheld = [], []
    with tempfile.TemporaryDirectory(prefix="imgpipe-plots-") as images:
        plots = dvc_json(repo, "plots", "diff", base, "-o", images)["data"]
        for name, entries in sorted(plots.items()):
            slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
            vega = [e for e in entries if e.get("type") == "vega"]
            for index, entry in enumerate(vega):
                target = out / f"{slug}{f'-{index}' if index else ''}.png"
                with atomic_path(target) as temporary:
                    temporary.write_bytes(vl_convert.vegalite_to_png(entry["content"], scale=1.5))
                rendered.append((name, target))
            pictures = [e for e in entries if e.get("type") == "image"]
            if pictures and not data_images:
                withheld.append(name)
                continue
            for entry in pictures:
                revision = entry["revisions"][0]
                target = out / f"{slug}-{re.sub(r'[^A-Za-z0-9]+', '-', revision)}.png"
                shutil.copyfile(entry["url"], target)
                rendered.append((f"{name} ({revision})", target))
    return rendered, withheld


# The metrics a reviewer looks at first, in this order; for ECE lower is better.
HEADLINE = (
    "accuracy",
    "macro_f1",
    "ece",
    "macro_roc_auc",
    "sensitivity",
    "specificity",
    "group_accuracy",
    "top5_accuracy",
    "tta_accuracy",
)
INTERVAL_KEYS = ("_ci_low", "_ci_high")  # eval.json's bootstrap interval beside each metric
INTERVAL_LEVEL = 0.95
PER_CLASS = "metrics/eval/per_class.csv"
PREDICTIONS = "metrics/eval/predictions.csv"
CALIBRATION = "metrics/calibration.json"
DRIFT_SUMMARY = "metrics/drift_baseline.json"
AUDIT = "metrics/audit.json"
AUDIT_SUSPECTS = "metrics/audit/suspects.csv"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _delta(change: Change) -> str:
    delta = change.delta
    if delta is None:
        return "" if change.old == change.new else "changed"
    return "0" if delta == 0 else f"{delta:+.4g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _details(summary: str, body: list[str]) -> list[str]:
    return ["", "<details>", f"<summary>{summary}</summary>", "", *body, "", "</details>"]


def _committed_text(repo: Path, base: str, path: str) -> str | None:
    """``path`` as committed at ``base`` (from git); None when it had no such file."""
    shown = subprocess.run(
        ["git", "show", f"{base}:{path}"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    return shown.stdout if shown.returncode == 0 else None


def _workspace_text(repo: Path, path: str) -> str | None:
    current = repo / path
    return current.read_text(encoding="utf-8") if current.is_file() else None


def per_class_rows(repo: Path, base: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The per-class scores at ``base`` (from git; empty when it had none) and now."""
    old, new = _committed_text(repo, base, PER_CLASS), _workspace_text(repo, PER_CLASS)
    return (
        list(csv.DictReader(io.StringIO(old))) if old is not None else [],
        list(csv.DictReader(io.StringIO(new))) if new is not None else [],
    )


@dataclass(frozen=True)
class SplitPredictions:
    """One revision's test predictions (``metrics/eval/predictions.csv``: file, group, label
    and one probability column per class) and the operating point its calibrate stage chose:
    what the report pairs two revisions on, image by image."""

    files: list[str]
    groups: list[str]  # "" for every image when the split has no groups
    labels: list[str]  # class names
    classes: list[str]
    probabilities: np.ndarray  # (images, classes), calibrated
    positive_class: str | None = None
    threshold: float | None = None


def parse_predictions(
    table: str, calibration: dict[str, Any] | None = None, *, where: str = PREDICTIONS
) -> SplitPredictions:
    """A predictions table, with the operating point of ``calibration`` (calibration.json)."""
    reader = csv.reader(io.StringIO(table))
    header = next(reader, [])
    if header[:3] != ["file", "group", "label"]:
        raise ImgpipeError(f"{where}: header {header[:3]} is not file, group, label")
    classes = [column.removeprefix("p:") for column in header[3:]]
    rows = list(reader)
    try:
        probabilities = np.array([[float(p) for p in row[3:]] for row in rows], dtype=np.float64)
    except ValueError as error:
        raise ImgpipeError(f"{where}: {error}") from None
    if probabilities.shape != (len(rows), len(classes)) or not classes:
        raise ImgpipeError(f"{where}: not one probability per class on every row")
    labels = [row[2] for row in rows]
    if unknown := sorted(set(labels) - set(classes)):
        raise ImgpipeError(f"{where}: labels {unknown[:5]} are not among its classes")
    settings = calibration or {}
    threshold = settings.get("threshold")
    return SplitPredictions(
        files=[row[0] for row in rows],
        groups=[row[1] for row in rows],
        labels=labels,
        classes=classes,
        probabilities=probabilities,
        positive_class=settings.get("positive_class"),
        threshold=None if threshold is None else float(threshold),
    )


def prediction_tables(
    repo: Path, base: str
) -> tuple[SplitPredictions | None, SplitPredictions | None]:
    """Both revisions' test predictions and operating points (None for a revision without
    predictions.csv): the base's from git, this change's from the workspace."""
    committed = _parsed(
        _committed_text(repo, base, PREDICTIONS),
        _committed_text(repo, base, CALIBRATION),
        where=f"{base}:{PREDICTIONS}",
    )
    current = _parsed(
        _workspace_text(repo, PREDICTIONS), _workspace_text(repo, CALIBRATION), where=PREDICTIONS
    )
    return committed, current


def _parsed(table: str | None, calibration: str | None, *, where: str) -> SplitPredictions | None:
    if table is None:
        return None
    try:
        settings = json.loads(calibration) if calibration else None
    except json.JSONDecodeError as error:
        raise ImgpipeError(
            f"{where.replace(PREDICTIONS, CALIBRATION)}: not JSON: {error}"
        ) from None
    return parse_predictions(table, settings, where=where)


def compare_predictions(
    base: SplitPredictions | None, head: SplitPredictions | None
) -> tuple[dict[str, PairedDelta], str]:
    """Head-minus-base deltas with paired bootstrap intervals when both revisions scored the
    same test images; otherwise no deltas and the line saying why they are not paired."""
    unpaired = f"deltas are not paired; each side's {INTERVAL_LEVEL:.0%} interval is shown."
    if base is None or head is None:
        where = "either side" if base is head else "the base" if base is None else "this change"
        return {}, f"No test predictions on {where} ({PREDICTIONS}): {unpaired}"
    order = _matching_rows(base, head)
    if order is None:
        sizes = f"{len(base.files)} -> {len(head.files)} images"
        return {}, f"The test split changed ({sizes}): {unpaired}"
    if sorted(base.classes) != sorted(head.classes):
        return {}, f"The classes changed: {unpaired}"
    columns = [head.classes.index(name) for name in base.classes]
    head_groups = [head.groups[i] for i in order]
    deltas = paired_deltas(
        np.array([base.classes.index(label) for label in base.labels]),
        base.probabilities,
        head.probabilities[order][:, columns],
        _resampled_groups(head_groups) or _resampled_groups(base.groups),
        _operating_point(base, base.classes),
        _operating_point(head, base.classes),
        level=INTERVAL_LEVEL,
    )
    return deltas, ""


def _matching_rows(base: SplitPredictions, head: SplitPredictions) -> np.ndarray | None:
    """The rows of ``head`` in ``base``'s order, matched by (file, label); None when the two
    hold different images (the test split changed)."""
    base_keys = list(zip(base.files, base.labels, strict=True))
    head_keys = list(zip(head.files, head.labels, strict=True))
    if sorted(base_keys) != sorted(head_keys):
        return None
    order = np.empty(len(base_keys), dtype=np.int64)
    order[sorted(range(len(base_keys)), key=base_keys.__getitem__)] = sorted(
        range(len(head_keys)), key=head_keys.__getitem__
    )
    return order


def _resampled_groups(groups: list[str]) -> list[str] | None:
    """The groups to resample whole: None when no image has one; an image without one is a
    group of its own."""
    if not any(groups):
        return None
    return [group or f"\0image {index}" for index, group in enumerate(groups)]


def _operating_point(side: SplitPredictions, classes: list[str]) -> OperatingPoint | None:
    """The side's operating point, its positive class indexed in ``classes``."""
    if side.threshold is None or side.positive_class not in classes:
        return None
    return OperatingPoint(classes.index(side.positive_class), side.threshold)


@dataclass(frozen=True)
class AuditCounts:
    """One revision's label audit (``metrics/audit.json``), reduced to what the report shows:
    counts and the method, never file names (a PR comment may be public)."""

    method: str
    folds: int
    epochs: int | None  # None for the features method
    images: dict[str, int]  # per split
    suspects: dict[str, tuple[int, int]]  # per split: (label errors, outliers)
    label_issues: int
    outliers: int
    exclude: bool
    excluded: int


def parse_audit(text: str, *, where: str = AUDIT) -> AuditCounts:
    """An audit.json's counts; a malformed one is an error naming ``where``."""
    try:
        summary = json.loads(text)
    except json.JSONDecodeError as error:
        raise ImgpipeError(f"{where}: not JSON: {error}") from None
    if not isinstance(summary, dict):
        raise ImgpipeError(f"{where}: not a JSON object")
    suspects = summary.get("suspects")
    if not isinstance(suspects, dict) or not all(isinstance(k, dict) for k in suspects.values()):
        raise ImgpipeError(f"{where}: suspects is not an object of splits")
    method = summary.get("method")
    if not isinstance(method, str):
        raise ImgpipeError(f"{where}: method is not a string")
    images = summary.get("images", {})
    if not isinstance(images, dict):
        raise ImgpipeError(f"{where}: images is not an object of splits")
    epochs = summary.get("epochs")
    return AuditCounts(
        method=method,
        folds=_count(summary.get("folds"), where, "folds"),
        epochs=None if epochs is None else _count(epochs, where, "epochs"),
        images={name: _count(n, where, f"images.{name}") for name, n in images.items()},
        suspects={
            name: (
                _count(kinds.get("label"), where, f"suspects.{name}.label"),
                _count(kinds.get("outlier"), where, f"suspects.{name}.outlier"),
            )
            for name, kinds in suspects.items()
        },
        label_issues=_count(summary.get("label_issues"), where, "label_issues"),
        outliers=_count(summary.get("outliers"), where, "outliers"),
        exclude=summary.get("exclude") is True,
        excluded=_count(summary.get("excluded_from_training", 0), where, "excluded_from_training"),
    )


def _count(value: Any, where: str, key: str) -> int:
    """``value`` as a count (bool is an int to Python, not a count here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ImgpipeError(f"{where}: {key} is not a count: {value!r}")
    return value


def audit_tables(repo: Path, base: str) -> tuple[AuditCounts | None, AuditCounts | None]:
    """Both revisions' audits (None for a revision without audit.json: older, or the stage
    not run): the base's from git, this change's from the workspace."""
    committed, current = _committed_text(repo, base, AUDIT), _workspace_text(repo, AUDIT)
    return (
        None if committed is None else parse_audit(committed, where=f"{base}:{AUDIT}"),
        None if current is None else parse_audit(current),
    )


def markdown(
    base: str,
    metrics: list[Change],
    params: list[Change],
    plots: list[tuple[str, Path]],
    *,
    relative_to: Path,
    per_class: tuple[list[dict[str, str]], list[dict[str, str]]] = ([], []),
    predictions: tuple[SplitPredictions | None, SplitPredictions | None] = (None, None),
    withheld: Sequence[str] = (),
    audit: tuple[AuditCounts | None, AuditCounts | None] = (None, None),
) -> str:
    """The PR comment, what moved first: the headline metrics with deltas judged against
    noise (paired over ``predictions``, base's and this change's), the label audit's counts
    (``audit``, base's and this change's), the changed params, then (collapsed) every other
    metric that moved, the per-class scores and the drift-baseline shares, and the plots."""
    lines = [f"## imgpipe: this change against `{base}`", ""]
    lines += _headline(metrics, *compare_predictions(*predictions))
    lines += _int8_refusal(metrics)
    lines += _audit(*audit)
    lines += ["", "### Params", ""]
    if params:
        lines += _table(
            ["param", "base", "this change"], [[c.key, _cell(c.old), _cell(c.new)] for c in params]
        )
    else:
        lines.append("No params changed.")
    others = [c for c in metrics if not _is_headline(c.key) and c.file != DRIFT_SUMMARY]
    moved = [c for c in others if c.old != c.new]
    if moved:
        rows = [[c.file, c.key, _cell(c.old), _cell(c.new), _delta(c)] for c in moved]
        header = ["file", "metric", "base", "this change", "delta"]
        lines += _details(f"Other metrics that moved ({len(moved)})", _table(header, rows))
    lines += _per_class(*per_class)
    drift = [c for c in metrics if c.file == DRIFT_SUMMARY and c.old != c.new]
    if drift:
        rows = [[c.key, _cell(c.old), _cell(c.new), _delta(c)] for c in drift]
        lines += _details(
            "Drift baseline (predicted shares and image statistics)",
            _table(["key", "base", "this change", "delta"], rows),
        )
    lines += _plots(plots, relative_to, withheld)
    return "\n".join(lines) + "\n"


def _is_headline(key: str) -> bool:
    """A headline metric or its interval (shown, or superseded by the paired one, above)."""
    return key in HEADLINE or any(
        key.endswith(suffix) and key.removesuffix(suffix) in HEADLINE for suffix in INTERVAL_KEYS
    )


def _headline(metrics: list[Change], deltas: dict[str, PairedDelta], unpaired: str) -> list[str]:
    """The headline metrics' table, in :data:`HEADLINE` order: with paired deltas, each
    delta's interval and whether it is beyond chance; without, each side's own interval and a
    line (``unpaired``) saying why."""
    headline = sorted(
        (c for c in metrics if c.key in HEADLINE),
        key=lambda c: (HEADLINE.index(c.key), c.file),
    )
    if not headline:
        return ["No headline metrics found."]
    level = f"{INTERVAL_LEVEL:.0%} CI"
    if not unpaired:
        rows = [[c.key, _cell(c.old), _cell(c.new), *_judged(c, deltas)] for c in headline]
        return _table(["metric", "base", "this change", f"delta ({level})", "verdict"], rows)
    intervals = {(c.file, c.key): c for c in metrics if c.key.endswith(INTERVAL_KEYS)}
    rows = [
        [c.key, _with_interval(c, intervals, "old"), _with_interval(c, intervals, "new"), _delta(c)]
        for c in headline
    ]
    with_level = any((c.file, c.key + INTERVAL_KEYS[0]) in intervals for c in headline)
    sides = [f"{name} ({level})" if with_level else name for name in ("base", "this change")]
    return [*_table(["metric", *sides, "delta"], rows), "", unpaired]


def _judged(change: Change, deltas: dict[str, PairedDelta]) -> list[str]:
    """The delta cell with its paired interval, and the verdict; the plain delta and no
    verdict for a metric with no paired delta (top-5, TTA, group-level)."""
    paired = deltas.get(change.key)
    if paired is None:
        return [_delta(change), ""]
    verdict = paired.verdict(lower_is_better=change.key in LOWER_IS_BETTER)
    return [_paired_cell(paired), "**worse**" if verdict == "worse" else verdict]


def _paired_cell(paired: PairedDelta) -> str:
    """``-0.030 [-0.041, -0.020]``: the delta and its interval to the same decimals, enough
    for two significant digits of the interval's reach from the delta (more would be noise)."""
    reach = max(abs(paired.low - paired.delta), abs(paired.high - paired.delta))
    if reach == 0:  # the same decisions in every resample
        return f"{_signed(paired.delta)} [{_signed(paired.low)}, {_signed(paired.high)}]"
    decimals = min(6, max(0, 1 - math.floor(math.log10(reach))))
    low, delta, high = (f"{v:+.{decimals}f}" for v in (paired.low, paired.delta, paired.high))
    return f"{delta} [{low}, {high}]"


def _signed(value: float) -> str:
    return "0" if value == 0 else f"{value:+.4g}"


def _with_interval(change: Change, intervals: dict[tuple[str, str], Change], side: str) -> str:
    """The metric's value on one side (``old`` or ``new``), with the 95% interval eval.json
    gives beside it when it has one: ``0.988 [0.981, 0.994]``."""
    value = getattr(change, side)
    bounds = [intervals.get((change.file, change.key + suffix)) for suffix in INTERVAL_KEYS]
    low, high = (getattr(bound, side) if bound else None for bound in bounds)
    if value is None or not isinstance(low, float | int) or not isinstance(high, float | int):
        return _cell(value)
    return f"{_cell(value)} [{low:.4g}, {high:.4g}]"


def _audit(base: AuditCounts | None, head: AuditCounts | None) -> list[str]:
    """The label audit's counts per split, each with its change from the base, the method
    behind them and what audit.exclude dropped; nothing when this change has no audit. Counts
    only: the suspects' names stay in suspects.csv, their pictures in the withheld sheet."""
    if head is None:
        return []
    before = {} if base is None else {**base.suspects, "all": (base.label_issues, base.outliers)}
    counts = {**head.suspects, "all": (head.label_issues, head.outliers)}
    images = {**head.images, "all": sum(head.images.values())} if head.images else {}
    rows = [
        [name, _cell(images.get(name)), *_count_cells(now, before.get(name))]
        for name, now in counts.items()
    ]
    lines = ["", "### Label audit", ""]
    lines += _table(["split", "images", "suspected label errors", "outliers"], rows)
    lines += ["", f"Method: {_audit_method(head)}."]
    if base is None:
        lines.append("No audit on base: counts without deltas.")
    elif base.method != head.method or base.folds != head.folds or base.epochs != head.epochs:
        lines.append(f"The base's audit used {_audit_method(base)}: not like for like.")
    if head.exclude:
        lines.append(
            f"`audit.exclude` is on: {head.excluded} training images suspected of a wrong label "
            "were left out of training."
        )
    lines.append(f"Every suspect, most suspicious first: `{AUDIT_SUSPECTS}`.")
    return lines


def _count_cells(now: tuple[int, int], before: tuple[int, int] | None) -> list[str]:
    """``8 (+2)``: each count and its change from the base (just the count without one)."""
    if before is None:
        return [str(n) for n in now]
    return [f"{n} ({n - b:+d})" if n != b else f"{n} (0)" for n, b in zip(now, before, strict=True)]


def _audit_method(audit: AuditCounts) -> str:
    """What produced the audit's verdicts, in words."""
    scored = f"{audit.folds}-fold out-of-sample probabilities from"
    if audit.method == "network":
        return f"{scored} the configured network trained {audit.epochs} epochs per fold"
    if audit.method == "features":
        return f"{scored} a logistic regression on the frozen pretrained features"
    return f"{scored} the {audit.method!r} method"


def _per_class(old_rows: list[dict[str, str]], new_rows: list[dict[str, str]]) -> list[str]:
    """The per-class scores (collapsed), F1 beside the base's."""
    if not new_rows:
        return []
    before = {row["class"]: row for row in old_rows}
    rows = [
        [
            row["class"],
            _cell(_number(before.get(row["class"], {}).get("f1"))),
            _cell(_number(row["f1"])),
            _cell(_number(row["precision"])),
            _cell(_number(row["recall"])),
            row["support"],
        ]
        for row in new_rows
    ]
    return _details(
        f"Per-class scores ({len(new_rows)} classes)",
        _table(["class", "F1 base", "F1", "precision", "recall", "support"], rows),
    )


def _plots(plots: list[tuple[str, Path]], relative_to: Path, withheld: Sequence[str]) -> list[str]:
    """The plots' images, and a line naming the image plots of test data left out."""
    lines: list[str] = []
    if plots:
        lines += ["", "### Plots", ""]
        lines += [f"![{name}]({path.relative_to(relative_to).as_posix()})" for name, path in plots]
    if withheld:
        lines += [
            "",
            f"Image plots of your data not included (privacy): {', '.join(withheld)}. "
            "`dvc plots diff` shows them locally; `--data-images` puts them in the report.",
        ]
    return lines


def _int8_refusal(metrics: list[Change]) -> list[str]:
    """A line under the headline when export-onnx refused the int8 model (the stage does not
    fail on it, so the report is where a reviewer learns of it)."""
    now = {c.key: c.new for c in metrics if c.file.endswith("export.json")}
    if now.get("int8") != "rejected":
        return []
    return [
        "",
        f"**int8 model rejected**: validation accuracy {_cell(now.get('int8_val_accuracy'))} "
        f"against fp32's {_cell(now.get('fp32_val_accuracy'))}, more than "
        "`export.int8_max_drop` allows; only the fp32 model was written.",
    ]


def _number(value: str | None) -> float | None:
    return None if value in (None, "") else float(value)


def write_report(repo: Path, base: str, out: Path, *, data_images: bool = False) -> Path:
    """Write ``out/report.md`` and ``out/plots/*.png``; return the markdown file's path.

    Data-derived images (the misclassified and Grad-CAM grids, the audit's suspect sheet) are
    left out unless ``data_images``: a report posted to a pull request may be uploaded to a
    public host. The audits are read first: a malformed one stops the report before any plot.
    """
    audit = audit_tables(repo, base)
    plots, withheld = render_plots(repo, base, out / "plots", data_images=data_images)
    text = markdown(
        base,
        metric_changes(repo, base),
        param_changes(repo, base),
        plots,
        relative_to=out,
        per_class=per_class_rows(repo, base),
        predictions=prediction_tables(repo, base),
        withheld=withheld,
        audit=audit,
    )
    target = out / "report.md"
    with atomic_path(target) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return target


def metric_drift(metrics: list[Change], tolerance: float, keys: list[str]) -> list[Change]:
    """The numeric metrics (those matching ``keys`` when given) that moved beyond ``tolerance``,
    and any metric present on one side only."""
    out = []
    for change in metrics:
        if keys and not any(re.fullmatch(pattern, change.key) for pattern in keys):
            continue
        delta = change.delta
        if delta is None and change.old != change.new:
            out.append(change)  # appeared, vanished or changed type
        elif delta is not None and abs(delta) > tolerance:
            out.append(change)
    return out
