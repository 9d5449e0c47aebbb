"""Frames from video clips, decoded one at a time with PyAV (whose wheel bundles FFmpeg):
the frames a :class:`FrameRate` selects, so neither preprocess nor ``imgpipe predict`` holds a
whole clip in memory. Preprocess writes the frames as images (the clip is their group);
predict classifies them with their frame index."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imgpipe.errors import ImgpipeError

if TYPE_CHECKING:
    from PIL import Image

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})


class VideoDecodeError(ImgpipeError):
    """A video file cannot be opened or decoded; the message says why."""


@dataclass(frozen=True)
class FrameRate:
    """Which frames of a clip are taken."""

    frames_per_second: float = 1.0  # by timestamp; 0: every ``stride``-th decoded frame
    stride: int = 1
    max_frames: int = 0  # the first this many selected frames; 0: no cap

    def __post_init__(self) -> None:
        if self.frames_per_second < 0 or self.stride < 1 or self.max_frames < 0:
            raise ValueError(f"invalid frame rate {self}")


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def iter_frames(path: Path, rate: FrameRate) -> Iterator[tuple[int, Image.Image]]:
    """``(index, RGB image)`` of each frame ``rate`` selects, in order; ``index`` counts every
    decoded frame from 0.

    Raises:
        VideoDecodeError: the file is not a video, has no video stream, or fails to decode
            part way (frames already yielded stay valid).
    """
    try:
        import av
    except ImportError:
        raise VideoDecodeError("reading video needs PyAV (pip install 'imgpipe[video]')") from None
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise VideoDecodeError(f"cannot open as video: {error}") from None
    with container:
        if not container.streams.video:
            raise VideoDecodeError("no video stream in the file")
        stream = container.streams.video[0]
        fallback_rate = float(stream.average_rate or stream.guessed_rate or 25)
        next_time, taken, index = 0.0, 0, -1
        try:
            for index, frame in enumerate(container.decode(stream)):
                if rate.frames_per_second > 0:
                    seconds = frame.time if frame.time is not None else index / fallback_rate
                    if seconds + 1e-6 < next_time:
                        continue
                    # The next frame due is at the next multiple of the period after this one.
                    next_time = (math.floor(seconds * rate.frames_per_second + 1e-6) + 1) / (
                        rate.frames_per_second
                    )
                elif index % rate.stride:
                    continue
                yield index, frame.to_image()  # type: ignore[no-untyped-call]
                taken += 1
                if rate.max_frames and taken >= rate.max_frames:
                    return
        except av.FFmpegError as error:
            raise VideoDecodeError(f"decoding failed after frame {index}: {error}") from None
