"""Decoding and resizing one image: the single code path shared by preprocess, evaluation
and serving, so that a model sees pixels prepared the same way everywhere."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgpipe.errors import ImgpipeError

# Refuse images above this many pixels before decoding them (decompression bombs).
MAX_PIXELS = 64_000_000


class ImageDecodeError(ImgpipeError):
    """A file is not a decodable image; the message says why."""


def decode_image(source: Path | bytes, size: int, channels: int) -> np.ndarray:
    """Decode an image by its content, square it and resize it.

    EXIF orientation is applied, the image is converted to ``channels`` (1: grey, 3: RGB; any
    transparency is composited on black, as in digit and X-ray scans), the shorter side is
    resized to ``size`` and the centre ``size`` x ``size`` is kept.

    Returns:
        ``uint8`` array of shape ``(size, size, channels)``.

    Raises:
        ImageDecodeError: empty, truncated, over-large or not an image.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > MAX_PIXELS:
                raise ImageDecodeError(
                    f"{opened.width}x{opened.height} pixels exceeds the limit of {MAX_PIXELS}"
                )
            opened.seek(0)  # first frame of animations
            image = ImageOps.exif_transpose(opened)
            image.load()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (content not recognised)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode: {exc}") from None
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
