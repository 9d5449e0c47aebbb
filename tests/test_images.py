import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgpipe.images import ImageDecodeError, decode_image


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_same_size_grey_png_is_unchanged() -> None:
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    decoded = decode_image(encode(Image.fromarray(pixels), "PNG"), 28, 1)
    assert decoded.shape == (28, 28, 1)
    np.testing.assert_array_equal(decoded[:, :, 0], pixels)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"])
def test_formats_decode_by_content(fmt: str) -> None:
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    decoded = decode_image(encode(image, fmt), 32, 3)
    assert decoded.shape == (32, 32, 3)
    assert decoded[..., 0].mean() > 150


def test_transparency_composites_on_black_and_16_bit_scales() -> None:
    rgba = Image.new("RGBA", (10, 10), (255, 255, 255, 0))
    assert decode_image(encode(rgba, "PNG"), 10, 1).max() == 0
    wide = Image.fromarray(np.full((10, 10), 4000, dtype=np.uint16))
    assert decode_image(encode(wide, "PNG"), 10, 1).min() == 255


def test_non_square_is_centre_cropped() -> None:
    pixels = np.zeros((20, 40), dtype=np.uint8)
    pixels[:, 10:30] = 255  # the centre square is white, the sides black
    assert decode_image(encode(Image.fromarray(pixels), "PNG"), 20, 1).min() == 255


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"", "empty file"), (b"hello, not an image", "not an image")],
)
def test_bad_bytes_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data, 28, 1)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    whole = encode(Image.effect_noise((64, 64), 50).convert("L"), "PNG")
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        decode_image(tmp_path / "cut.png", 28, 1)
