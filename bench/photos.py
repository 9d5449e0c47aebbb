"""``python -m bench photos``: the whole pipeline on a photo folder, the laptop-CPU job of
``finetune: head``: it builds N photo crops, runs one ``dvc repro`` in a fresh copy of this
checkout and times it and each of its stages, and with ``--baseline REV`` does the same with the
code of an earlier commit (same photos, same settings, same run) and prints each ratio. With
``--rounds N`` both sides run N times, alternating which goes first, each time in a fresh copy
(a shared machine's slow spells then hit both alike); the figures are the medians, and the
output says whether every round of a side wrote the same model and drift reference bytes.

The photos are crops of the two photos scikit-learn ships (a palace and a flower), four classes
(the left and right half of each: a crop's centre decides its class, so crops near the middle
are genuinely ambiguous), resized to ``--image-size`` and saved as JPEG with varied brightness.
Without ``--weights`` the backbone has random weights: the timings are those of the real
network, the accuracy is not (the output says which).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Clock, Commands, add_output_argument, emit

NAME = "photos"
REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("china-left", "china-right", "flower-left", "flower-right")
# What a rerun must write bit for bit: the served models and the drift reference.
OUTPUTS = (
    "models/model.onnx",
    "models/int8/model.onnx",
    "data/drift_baseline/reference.parquet",
)


def add_parser(benches: Commands) -> None:
    """Register the command on ``benches`` (an ``add_subparsers`` result)."""
    sub = benches.add_parser(
        NAME,
        help="the whole dvc repro on N photo crops with finetune: head, each stage timed; "
        "--baseline REV times an earlier commit's code in the same run",
    )
    sub.add_argument("--photos", type=int, default=5000, help="photo crops (4 classes)")
    sub.add_argument("--image-size", type=int, default=224, help="side of each crop")
    sub.add_argument("--model", default="tf_efficientnet_lite0", help="timm model")
    sub.add_argument(
        "--weights",
        type=Path,
        help="pretrained weights file for --model (default: random weights, same timings)",
    )
    sub.add_argument("--epochs", type=int, default=10, help="epochs of the head")
    sub.add_argument(
        "--baseline", metavar="REV", help="git revision whose code runs the same job first"
    )
    sub.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="runs of each side, alternating which goes first; medians reported",
    )
    sub.add_argument("--workdir", type=Path, help="keep the photos and the runs here")
    add_output_argument(sub)
    sub.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-photos-") as scratch:
        emit(
            bench_photos(
                args.workdir or Path(scratch),
                photos=args.photos,
                image_size=args.image_size,
                model=args.model,
                weights=args.weights,
                epochs=args.epochs,
                baseline=args.baseline,
                rounds=args.rounds,
            ),
            args.output,
        )


def bench_photos(
    workdir: Path,
    *,
    photos: int,
    image_size: int,
    model: str,
    weights: Path | None,
    epochs: int,
    baseline: str | None = None,
    rounds: int = 1,
    clock: Clock = time.perf_counter,
) -> dict[str, Any]:
    """Time each stage of the pipeline on ``photos`` crops in a copy of this checkout, and in
    one of revision ``baseline`` when given: ``rounds`` times each, alternating which side goes
    first (the baseline in the first round). Each run gets a fresh copy, ``workdir``/SIDE-ROUND;
    only the last round's copies are kept."""
    folder = write_photos(workdir / "photos", photos, image_size)
    weights_file = weights or random_weights(workdir / f"{model}-random.pth", model)
    settings = {
        "data.source": str(folder),
        "preprocess.image_size": str(image_size),
        "preprocess.channels": "3",
        "model": model,
        "pretrained": f"weights/{weights_file.name}",
        "finetune": "head",
        "epochs": str(epochs),
    }
    sides = {"new": None} if baseline is None else {"baseline": baseline, "new": None}
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for round_number in range(1, rounds + 1):
        order = list(sides.items())
        for side, revision in order if round_number % 2 else order[::-1]:
            repo = checkout(workdir / f"{side}-{round_number}", revision)
            shutil.copy(weights_file, repo / "weights" / weights_file.name)
            configure(repo / "params.yaml", settings)
            runs[side].append(time_stages(repo, clock))
            if round_number < rounds:
                shutil.rmtree(repo)  # 5,000 photos take 3 GB a copy
    return summarise(runs, photos, image_size, model, weights)


def write_photos(folder: Path, count: int, size: int, seed: int = 0) -> Path:
    """``count`` JPEG crops of scikit-learn's sample photos in the four :data:`CLASSES`."""
    from PIL import Image, ImageEnhance
    from sklearn.datasets import load_sample_images

    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    sources = dict(zip(("china", "flower"), load_sample_images().images, strict=True))
    for index in range(count):
        name = CLASSES[index % len(CLASSES)]
        photo, half = name.split("-")
        image = Image.fromarray(sources[photo])
        width, height = image.size
        side = int(height * rng.uniform(0.3, 0.6))
        low, high = (side / 2, width / 2) if half == "left" else (width / 2, width - side / 2)
        left, top = int(rng.uniform(low, high) - side / 2), int(rng.integers(0, height - side))
        crop = image.crop((left, top, left + side, top + side)).resize((size, size))
        crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.6, 1.4))
        (folder / name).mkdir(parents=True, exist_ok=True)
        crop.save(folder / name / f"{index:05d}.jpg", quality=85)
    return folder


def random_weights(path: Path, model: str) -> Path:
    """A weights file of ``model`` at its random initialisation (ImageNet-sized head)."""
    import timm
    import torch

    import imgpipe.training.model  # noqa: F401  registers test_resnet with timm

    torch.manual_seed(0)
    torch.save(timm.create_model(model).state_dict(), path)
    return path


def checkout(destination: Path, revision: str | None) -> Path:
    """A fresh git repository holding this checkout's tracked and untracked (not ignored)
    files, or with ``revision`` the files of that commit."""
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    if revision is None:
        copy_working_tree(destination)
    else:
        with tarfile.open(fileobj=io.BytesIO(git_output(REPO_ROOT, "archive", revision))) as tar:
            tar.extractall(destination, filter="data")
    git_output(destination, "init", "-q")
    git_output(destination, "add", "-A")
    git_output(destination, "commit", "-q", "-m", f"bench photos: {revision or 'working tree'}")
    return destination


def copy_working_tree(destination: Path) -> None:
    """Copy into ``destination`` the files of this checkout that git tracks or would track (no
    ignored outputs, no caches); the end-to-end tests start from the same copy."""
    listed = git_output(REPO_ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for relative in filter(None, listed.decode().split("\0")):
        source = REPO_ROOT / relative
        if source.is_file():
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / relative)


def git_output(repo: Path, *args: str) -> bytes:
    identity = ["-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    return subprocess.run(
        ["git", *identity, *args], cwd=repo, check=True, capture_output=True
    ).stdout


def configure(params: Path, settings: dict[str, str]) -> None:
    """Set ``section.key`` (or top-level ``key``) values in params.yaml, keeping its comments."""
    lines = params.read_text().splitlines(keepends=True)
    for dotted, value in settings.items():
        section, _, key = dotted.rpartition(".")
        indent = "  " if section else ""
        current, done = "", False
        for number, line in enumerate(lines):
            heading = re.match(r"^(\w+):", line)
            if heading:
                current = heading.group(1)
            match = re.match(rf"^{indent}{key}:( +)\S+", line)
            if match and (not section or current == section):
                lines[number] = f"{indent}{key}:{match.group(1)}{value}{line[match.end() :]}"
                done = True
                break
        if not done:
            raise ValueError(f"{params}: no key {dotted!r} to set")
    params.write_text("".join(lines))


def time_stages(repo: Path, clock: Clock) -> dict[str, Any]:
    """One ``dvc repro`` of ``repo``, as a user runs it (DVC starts once, not once per stage),
    each stage timed from the line DVC prints as it starts it to the next one's (the last to
    DVC's exit, so a stage's time includes DVC hashing and recording its outputs)."""
    from imgpipe.io import file_sha256, read_json

    environment = dict(os.environ)
    # The stages call `python`: this environment's, running the copy's own library.
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    environment["PYTHONPATH"] = str(repo / "src")
    started = clock()
    process = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=repo,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    starts: dict[str, float] = {}
    tail: deque[str] = deque(maxlen=40)  # what a failure shows
    for line in process.stdout:  # progress bars' carriage returns end lines too
        stage = re.match(r"Running stage '([^']+)'", line)
        if stage:
            starts[stage.group(1)] = clock()
            print(f"{repo.name}: {stage.group(1)} started", file=sys.stderr, flush=True)
        tail.append(line)
    ended = clock()
    if process.wait():
        raise RuntimeError(f"{repo}: dvc repro failed:\n{''.join(tail)[-3000:]}")
    ends = [*list(starts.values())[1:], ended]
    seconds = {
        stage: round(end - start, 1)
        for (stage, start), end in zip(starts.items(), ends, strict=True)
    }
    scores = read_json(repo / "metrics/eval.json")
    return {
        "seconds": seconds,
        "total_seconds": round(ended - started, 1),
        "test_accuracy": [scores[f"accuracy{end}"] for end in ("", "_ci_low", "_ci_high")],
        "outputs_sha256": {
            name: file_sha256(repo / name) for name in OUTPUTS if (repo / name).is_file()
        },
    }


def summarise(
    runs: dict[str, list[dict[str, Any]]],
    photos: int,
    image_size: int,
    model: str,
    weights: Path | None,
) -> dict[str, Any]:
    """Each side's median seconds per stage and in all, its runs' totals, whether its runs
    wrote the same outputs, and the baseline-over-new ratios of the medians."""
    results: dict[str, Any] = {
        "photos": photos,
        "image_size": image_size,
        "model": model,
        "weights": weights.name if weights else "random (timings only: accuracy is meaningless)",
        "cores": os.cpu_count(),
        "rounds": len(runs["new"]),
    }
    for side, prefix in (("new", ""), ("baseline", "baseline_")):
        if side not in runs:
            continue
        side_runs = runs[side]
        results[f"{prefix}seconds"] = {
            stage: _median([run["seconds"][stage] for run in side_runs])
            for stage in side_runs[0]["seconds"]
        }
        totals = [run["total_seconds"] for run in side_runs]
        results[f"{prefix}total_seconds"] = _median(totals)
        results[f"{prefix}total_seconds_per_round"] = totals
        results[f"{prefix}test_accuracy"] = side_runs[0]["test_accuracy"]
        results[f"{prefix}outputs_sha256"] = side_runs[0]["outputs_sha256"]
        results[f"{prefix}identical_reruns"] = all(
            run["outputs_sha256"] == side_runs[0]["outputs_sha256"]
            and run["test_accuracy"] == side_runs[0]["test_accuracy"]
            for run in side_runs
        )
    if "baseline" in runs:
        results["speedup"] = {
            stage: round(results["baseline_seconds"][stage] / max(seconds, 1e-9), 2)
            for stage, seconds in results["seconds"].items()
            if stage in results["baseline_seconds"]
        }
        results["total_speedup"] = round(
            results["baseline_total_seconds"] / max(results["total_seconds"], 1e-9), 2
        )
    return results


def _median(values: list[float]) -> float:
    return round(float(np.median(values)), 1)
