"""Pull-request reports and metric checks, built on DVC's own diffs.

``imgpipe report`` turns ``dvc metrics diff``, ``dvc params diff`` and ``dvc plots diff`` against
a base revision into markdown with the plots rendered to PNG (vl-convert), ready for a PR
comment. ``imgpipe check-metrics`` fails when reproduced metrics drift from a revision's.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgpipe.errors import ImgpipeError
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
    (curves, matrices: aggregates) rendered; image plots (the misclassified and Grad-CAM grids,
    made of test images) copied once per revision only with ``data_images``. Returns the
    rendered plots and the names of the image plots left out."""
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
HEADLINE = ("accuracy", "macro_f1", "ece", "macro_roc_auc", "top5_accuracy", "tta_accuracy")
LOWER_IS_BETTER = frozenset({"ece"})
PER_CLASS = "metrics/eval/per_class.csv"
DRIFT_SUMMARY = "metrics/drift_baseline.json"


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


def _verdict(change: Change, threshold: float) -> str:
    """A clear mark when a headline metric moved beyond ``threshold`` in either direction."""
    delta = change.delta
    if delta is None or abs(delta) <= threshold:
        return ""
    worse = delta > 0 if change.key in LOWER_IS_BETTER else delta < 0
    return "**regression**" if worse else "improvement"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _details(summary: str, body: list[str]) -> list[str]:
    return ["", "<details>", f"<summary>{summary}</summary>", "", *body, "", "</details>"]


def per_class_rows(repo: Path, base: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The per-class scores at ``base`` (from git; empty when it had none) and now."""
    shown = subprocess.run(
        ["git", "show", f"{base}:{PER_CLASS}"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    old = list(csv.DictReader(io.StringIO(shown.stdout))) if shown.returncode == 0 else []
    current = repo / PER_CLASS
    new = list(csv.DictReader(io.StringIO(current.read_text()))) if current.is_file() else []
    return old, new


def markdown(
    base: str,
    metrics: list[Change],
    params: list[Change],
    plots: list[tuple[str, Path]],
    *,
    relative_to: Path,
    per_class: tuple[list[dict[str, str]], list[dict[str, str]]] = ([], []),
    withheld: Sequence[str] = (),
    threshold: float = 0.005,
) -> str:
    """The PR comment, what moved first: the headline metrics with deltas and a regression
    mark beyond ``threshold``, the changed params, then (collapsed) every other metric that
    moved, the per-class scores and the drift-baseline shares, and the plots."""
    lines = [f"## imgpipe: this change against `{base}`", ""]
    lines += _headline(metrics, threshold)
    lines += _int8_refusal(metrics)
    lines += ["", "### Params", ""]
    if params:
        lines += _table(
            ["param", "base", "this change"], [[c.key, _cell(c.old), _cell(c.new)] for c in params]
        )
    else:
        lines.append("No params changed.")
    others = [c for c in metrics if c.key not in HEADLINE and c.file != DRIFT_SUMMARY]
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


def _headline(metrics: list[Change], threshold: float) -> list[str]:
    """The headline metrics' table, in :data:`HEADLINE` order."""
    headline = sorted(
        (c for c in metrics if c.key in HEADLINE),
        key=lambda c: (HEADLINE.index(c.key), c.file),
    )
    if not headline:
        return ["No headline metrics found."]
    rows = [
        [c.key, _cell(c.old), _cell(c.new), _delta(c), _verdict(c, threshold)] for c in headline
    ]
    return _table(["metric", "base", "this change", "delta", f"beyond {threshold:g}"], rows)


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
            f"Image plots of test data not included (privacy): {', '.join(withheld)}. "
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


def write_report(
    repo: Path, base: str, out: Path, *, data_images: bool = False, threshold: float = 0.005
) -> Path:
    """Write ``out/report.md`` and ``out/plots/*.png``; return the markdown file's path.

    Data-derived images (the misclassified and Grad-CAM grids) are left out unless
    ``data_images``: a report posted to a pull request may be uploaded to a public host.
    """
    plots, withheld = render_plots(repo, base, out / "plots", data_images=data_images)
    text = markdown(
        base,
        metric_changes(repo, base),
        param_changes(repo, base),
        plots,
        relative_to=out,
        per_class=per_class_rows(repo, base),
        withheld=withheld,
        threshold=threshold,
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
