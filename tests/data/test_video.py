"""Video as a source: frames chosen by rate, stride and cap, decoded faithfully, bad files named,
and the preprocess stage cutting a folder of clips into frames grouped by clip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imgpipe.data.splits import load_split
from imgpipe.data.video import FrameRate, VideoDecodeError, iter_frames
from tests.conftest import REPO_ROOT, write_image_folder
from tests.data.video_clips import frame_colour, write_clip, write_empty_clip


def indices(clip: Path, rate: FrameRate) -> list[int]:
    return [index for index, _ in iter_frames(clip, rate)]


def test_frames_are_taken_by_rate_stride_and_cap(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4", frames=30, fps=10)
    assert indices(clip, FrameRate(frames_per_second=2)) == [0, 5, 10, 15, 20, 25]
    assert indices(clip, FrameRate(frames_per_second=20)) == list(range(30))  # all there is
    assert indices(clip, FrameRate(frames_per_second=0, stride=4)) == [0, 4, 8, 12, 16, 20, 24, 28]
    assert indices(clip, FrameRate(frames_per_second=1, max_frames=2)) == [0, 10]


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".mkv"])
def test_decoded_frames_are_the_encoded_ones(tmp_path: Path, suffix: str) -> None:
    clip = write_clip(tmp_path / f"c{suffix}", frames=8, fps=10, seed=3)
    frames = list(iter_frames(clip, FrameRate(frames_per_second=0)))
    assert [i for i, _ in frames] == list(range(8))
    for index, image in frames:
        pixels = np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3)
        assert image.size == (64, 48)
        # yuv420p rounding: within a few levels of the flat colour encoded in that frame
        assert np.abs(pixels.mean(0) - frame_colour(index, seed=3)).max() < 4
        assert pixels.std(0).max() < 2


def test_unreadable_videos_say_why(tmp_path: Path) -> None:
    whole = write_clip(tmp_path / "whole.mp4", frames=10).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "text.mp4").write_text("not a video at all " * 20)
    for name in ("cut.mp4", "text.mp4"):
        with pytest.raises(VideoDecodeError, match=r"cannot open as video: .*Invalid data"):
            list(iter_frames(tmp_path / name, FrameRate()))
    with pytest.raises(VideoDecodeError, match="no video stream"):
        list(iter_frames(write_empty_clip(tmp_path / "empty.mp4"), FrameRate()))


def test_preprocess_cuts_clips_into_frames_that_never_straddle_splits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve clips per class beside a few images, a broken clip and an empty one, through the
    stage script: frames at 2 per second, each clip in one split, bad clips reported."""
    from tests.test_cli import run_stage_script

    raw = write_image_folder(tmp_path / "raw", per_class=3)
    for label, name in enumerate(("left", "right")):
        for clip in range(12):
            write_clip(
                raw / name / f"clip{clip:02d}.mp4", frames=12, fps=10, seed=100 * label + clip
            )
    (raw / "left" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    write_empty_clip(raw / "right" / "empty.mp4")
    params = (REPO_ROOT / "params.yaml").read_text()
    for old, new in (
        ("image_size: 28", "image_size: 16"),
        ("channels: 1", "channels: 3"),
        ("frames_per_second: 1 ", "frames_per_second: 2 "),
    ):
        assert old in params
        params = params.replace(old, new)
    (tmp_path / "params.yaml").write_text(params)
    monkeypatch.chdir(tmp_path)
    run_stage_script("preprocess.py", "--raw", "raw", "--out", "out", "--report", "data.json")

    report = json.loads((tmp_path / "data.json").read_text())
    assert report["video"] == {"clips": 26, "frames": 72, "skipped": 2}  # 24 clips x 0/5/10
    reasons = {e["file"]: e["reason"] for e in report["skipped"]}
    assert reasons.keys() == {"left/broken.mp4", "right/empty.mp4"}
    assert reasons["left/broken.mp4"].startswith("video: cannot open as video")
    assert reasons["right/empty.mp4"] == "video: no video stream in the file"
    assert sum(report["totals"].values()) == 72 + 6
    clip_of: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        arrays = load_split(tmp_path / "out" / split)
        for row, file in enumerate(arrays.files):
            if ".mp4/" not in file:
                continue
            clip_name, frame_name = file.split(".mp4/")
            clip_of.setdefault(clip_name, set()).add(split)
            index = int(frame_name.removeprefix("frame_").removesuffix(".png"))
            assert index in (0, 5, 10)
            label = ("left", "right").index(clip_name.split("/")[0])
            number = int(clip_name[-2:])
            colour = frame_colour(index, seed=100 * label + number)
            assert np.abs(arrays.images[row].reshape(-1, 3).mean(0) - colour).max() < 4
    assert len(clip_of) == 24 and all(len(splits) == 1 for splits in clip_of.values())
    assert report["groups"]["unmatched_count"] == 0  # no pattern: nothing to match
    assert not any(p.name.startswith(".frames-") for p in tmp_path.iterdir())  # scratch gone


def test_predict_classifies_the_frames_of_a_video_beside_images(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    import csv

    from PIL import Image

    from imgpipe.cli import main
    from imgpipe.data.images import prepare_image
    from imgpipe.runtime.onnx_model import OnnxClassifier

    folder = tmp_path / "in"
    clip = write_clip(folder / "clip.mp4", frames=20, fps=10, seed=7)
    Image.new("L", (40, 40), 200).save(folder / "still.png")
    (folder / "bad.mp4").write_text("not a video")
    out = tmp_path / "predictions.csv"
    code = main(
        [
            "predict",
            str(folder),
            "--model",
            str(tiny_onnx),
            "--output",
            str(out),
            "--frames-per-second",
            "5",
            "--top-k",
            "1",
        ]
    )
    assert code == 1  # bad.mp4
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    by_file: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_file.setdefault(Path(row["path"]).name, []).append(row)
    [bad] = by_file["bad.mp4"]
    assert bad["error"].startswith("cannot open as video") and bad["frame"] == ""
    [still] = by_file["still.png"]
    assert still["frame"] == "" and not still["error"]
    frames = by_file["clip.mp4"]
    assert [int(r["frame"]) for r in frames] == list(range(0, 20, 2))
    classifier = OnnxClassifier(tiny_onnx)
    pixels = np.stack(
        [
            prepare_image(image, 32, 1)
            for _, image in iter_frames(clip, FrameRate(frames_per_second=5))
        ]
    )
    probabilities, _ = classifier.run(pixels)
    np.testing.assert_allclose(
        [float(r["probability_1"]) for r in frames], probabilities.max(1), atol=1e-5
    )
