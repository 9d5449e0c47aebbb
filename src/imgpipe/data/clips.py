"""Video clips in the raw tree become frame images before the split.

Each clip found among a class's files is decoded on a worker process (one clip per worker at
a time, frame by frame, never whole), the frames ``preprocess.frames_per_second`` (or
``frame_stride``) and ``max_frames_per_clip`` select are written as lossless PNG files into a
scratch folder, and the clip's sample is replaced by one sample per frame, named
``<clip path>/frame_<index>.png`` and grouped by the clip, so a clip never straddles splits.
A clip that cannot be opened, fails part way or holds no frame is skipped with its reason.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from imgpipe.data.samples import Sample
from imgpipe.data.video import FrameRate, VideoDecodeError, is_video, iter_frames
from imgpipe.data.workers import fork_map


@dataclass
class ClipOutcome:
    """What the frame extraction found: clips, frames written, clips skipped with reasons."""

    clips_found: int = 0
    frames_written: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {
            "clips": self.clips_found,
            "frames": self.frames_written,
            "skipped": len(self.skipped),
        }


def frame_name(index: int) -> str:
    return f"frame_{index:06d}.png"


def expand_clips(
    samples: dict[str | None, list[Sample]],
    raw_root: Path,
    scratch: Path,
    rate: FrameRate,
    workers: int,
) -> tuple[dict[str | None, list[Sample]], ClipOutcome]:
    """The samples with each video clip replaced by its frames (written below ``scratch``)."""
    outcome = ClipOutcome()
    clips = [(split, s) for split, part in samples.items() for s in part if is_video(s.path)]
    if not clips:
        return samples, outcome
    jobs = [(raw_root / s.path, scratch / s.path, rate) for _, s in clips]
    frames_of: dict[Path, list[int]] = {}
    progress = tqdm(total=len(jobs), desc="frames", unit="clip")
    for (split, clip), (indices, reason) in zip(
        clips, fork_map(_extract, jobs, workers), strict=True
    ):
        progress.update()
        outcome.clips_found += 1
        if reason is not None:
            outcome.skipped.append({"split": split, "file": clip.path.as_posix(), "reason": reason})
            continue
        frames_of[clip.path] = indices
        outcome.frames_written += len(indices)
        progress.set_postfix(frames=outcome.frames_written)
    progress.close()
    expanded: dict[str | None, list[Sample]] = {}
    for split, part in samples.items():
        expanded[split] = []
        for s in part:
            if not is_video(s.path):
                expanded[split].append(s)
                continue
            expanded[split] += [
                replace(
                    s,
                    path=s.path / frame_name(index),
                    clip=s.path.as_posix(),
                    file=scratch / s.path / frame_name(index),
                )
                for index in frames_of.get(s.path, [])
            ]
    return expanded, outcome


_Job = tuple[Path, Path, FrameRate]
_Result = tuple[list[int], str | None]


def _extract(job: _Job) -> _Result:
    """Write the selected frames of one clip: ``(frame indices, None)`` or ``([], reason)``;
    a clip that fails part way leaves no frame behind."""
    clip, folder, rate = job
    folder.mkdir(parents=True, exist_ok=True)
    indices: list[int] = []
    try:
        for index, image in iter_frames(clip, rate):
            image.save(folder / frame_name(index), compress_level=1)
            indices.append(index)
    except VideoDecodeError as error:
        shutil.rmtree(folder)
        return [], f"video: {error}"
    except OSError as error:
        shutil.rmtree(folder)
        return [], f"cannot read: {error.strerror or error}"
    if not indices:
        return [], "video: no frames decoded (an empty clip)"
    return indices, None
