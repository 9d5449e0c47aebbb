"""Pull-request reports and metric checks, built on DVC's own diffs.

``imgpipe report`` turns ``dvc metrics diff``, ``dvc params diff`` and ``dvc plots diff`` against
a base revision into markdown with the plots rendered to PNG (vl-convert), ready for a PR
comment. ``imgpipe check-metrics`` fails when reproduced metrics drift from a revision's.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
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
        cwd=repo, capture_output=True, text=True, check=False,
    )  # fmt: skip
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


def render_plots(repo: Path, base: str, out: Path) -> list[tuple[str, Path]]:
    """Every DVC plot, base revision against the workspace, as a PNG in ``out``: Vega plots
    rendered, image plots (the misclassified grid) copied once per revision."""
    import vl_convert

    out.mkdir(parents=True, exist_ok=True)
    rendered = []
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
            for entry in (e for e in entries if e.get("type") == "image"):
                revision = entry["revisions"][0]
                target = out / f"{slug}-{re.sub(r'[^A-Za-z0-9]+', '-', revision)}.png"
                shutil.copyfile(entry["url"], target)
                rendered.append((f"{name} ({revision})", target))
    return rendered


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


def markdown(
    base: str,
    metrics: list[Change],
    params: list[Change],
    plots: list[tuple[str, Path]],
    *,
    relative_to: Path,
    metric_limit: int = 40,
) -> str:
    """The PR comment: metric and param tables with deltas, then the plots.

    Metrics that moved come first; unchanged ones are listed only when top-level (accuracy,
    macro_f1, ...), not nested (per-class scores, counts), and at most ``metric_limit`` rows.
    """
    lines = [f"## imgpipe: this change against `{base}`", ""]
    moved = [c for c in metrics if c.old != c.new]
    headline = [c for c in metrics if c.old == c.new and "." not in c.key]
    shown = [*moved, *headline][:metric_limit]
    if metrics:
        lines += ["### Metrics", "", "| file | metric | base | this change | delta |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for change in shown:
            lines.append(
                f"| {change.file} | {change.key} | {_cell(change.old)} | {_cell(change.new)} "
                f"| {_delta(change)} |"
            )
        if len(shown) < len(metrics):
            lines.append(f"\n{len(metrics) - len(shown)} more metrics not shown.")
    else:
        lines.append("No metrics found.")
    lines += ["", "### Params", ""]
    if params:
        lines += ["| file | param | base | this change |", "|---|---|---|---|"]
        lines += [f"| {c.file} | {c.key} | {_cell(c.old)} | {_cell(c.new)} |" for c in params]
    else:
        lines.append("No params changed.")
    if plots:
        lines += ["", "### Plots", ""]
        lines += [f"![{name}]({path.relative_to(relative_to).as_posix()})" for name, path in plots]
    return "\n".join(lines) + "\n"


def write_report(repo: Path, base: str, out: Path) -> Path:
    """Write ``out/report.md`` and ``out/plots/*.png``; return the markdown file's path."""
    text = markdown(
        base,
        metric_changes(repo, base),
        param_changes(repo, base),
        render_plots(repo, base, out / "plots"),
        relative_to=out,
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
