"""Decoding and resizing one image: the single code path shared by preprocess, evaluation
and serving, so that a model sees pixels prepared the same way everywhere."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgpipe.errors import ImgpipeError

# Preprocess skips images above this many pixels before decoding them (decompression bombs);
# the service has its own, lower default (runtime.classify.SERVED_MAX_PIXELS).
PIPELINE_MAX_PIXELS = 64_000_000


class ImageDecodeError(ImgpipeError):
    """A file is not a decodable image; the message says why."""


class NotAnImageError(ImageDecodeError):
    """The content is not an image in any (allowed) format."""


class ImageTooLargeError(ImageDecodeError):
    """The image declares more pixels than allowed."""


def decode_image(
    source: Path | bytes,
    size: int,
    channels: int,
    *,
    max_pixels: int = PIPELINE_MAX_PIXELS,
    formats: Sequence[str] | None = None,
) -> np.ndarray:
    """Decode an image by its content, square it and resize it.

    EXIF orientation is applied, the image is converted to ``channels`` (1: grey, 3: RGB; any
    transparency is composited on black, as in digit and X-ray scans), the shorter side is
    resized to ``size`` and the centre ``size`` x ``size`` is kept.

    Args:
        source: a file, or its bytes.
        size: side of the square result.
        channels: 1 (grey) or 3 (RGB).
        max_pixels: images declaring more pixels are refused before decoding.
        formats: Pillow format names to accept (e.g. ``("PNG", "JPEG")``); None: any.

    Returns:
        ``uint8`` array of shape ``(size, size, channels)``.

    Raises:
        ImageDecodeError: empty or truncated (the subclasses :class:`NotAnImageError` and
            :class:`ImageTooLargeError` say it is not an image, or too large).
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with Image.open(
            io.BytesIO(data), formats=None if formats is None else list(formats)
        ) as opened:
            if opened.width * opened.height > max_pixels:
                raise ImageTooLargeError(
                    f"{opened.width}x{opened.height} pixels exceeds the limit of {max_pixels}"
                )
            opened.seek(0)  # first frame of animations
            image = ImageOps.exif_transpose(opened)
            image.load()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        allowed = f" in an accepted format ({', '.join(formats)})" if formats else ""
        raise NotAnImageError(f"not an image{allowed} (content not recognised)") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"cannot decode: {exc}") from None
    return prepare_image(image, size, channels)


def prepare_image(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """A decoded image (a file's, or a video frame) as the model sees it: converted to
    ``channels``, the shorter side resized to ``size``, the centre square kept; ``uint8``
    ``(size, size, channels)``."""
    image = _to_channels(image, channels)
    image = ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels.reshape(size, size, channels)


def _to_channels(image: Image.Image, channels: int) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16/32-bit greys: scale to 8 bits instead of clipping.
        wide = np.asarray(image, dtype=np.float64)
        top = wide.max() or 1.0
        image = Image.fromarray((wide * (255.0 / top)).astype(np.uint8), mode="L")
    return image.convert("L" if channels == 1 else "RGB")
