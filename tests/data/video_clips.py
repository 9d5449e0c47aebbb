"""Small video files the tests write with PyAV: each frame one flat colour, so a decoded frame
can be checked against what was encoded (within the codec's tolerance)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def frame_colour(index: int, seed: int = 0) -> tuple[int, int, int]:
    """A colour per frame that changes a lot from frame to frame."""
    rng = np.random.default_rng(seed * 1000 + index)
    return tuple(int(v) for v in rng.integers(30, 226, 3))  # type: ignore[return-value]


def write_clip(
    path: Path, frames: int, fps: int = 10, seed: int = 0, size: tuple[int, int] = (64, 48)
) -> Path:
    """An H.264 (mp4, mkv) or VP9 (webm) clip of ``frames`` flat-colour frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "libvpx-vp9" if path.suffix == ".webm" else "libx264"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "ultrafast"}
        for index in range(frames):
            pixels = np.zeros((size[1], size[0], 3), np.uint8)
            pixels[:] = frame_colour(index, seed)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_empty_clip(path: Path) -> Path:
    """An mp4 file with a header and no frame (FFmpeg then finds no video stream in it)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height = 64, 48
        stream.pix_fmt = "yuv420p"
        container.start_encoding()
    return path
