import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgpipe.data.images import ImageDecodeError, decode_image


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_same_size_grey_png_is_unchanged() -> None:
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    decoded = decode_image(encode(Image.fromarray(pixels), "PNG"), 28, 1)
    assert decoded.shape == (28, 28, 1)
    np.testing.assert_array_equal(decoded[:, :, 0], pixels)


def smooth_rgb(width: int, height: int) -> np.ndarray:
    """Gradients in each channel: every pixel differs, and lossy codecs keep it closely."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (width + height - 2)],
        axis=-1,
    ).astype(np.uint8)


@pytest.mark.parametrize(
    ("fmt", "tolerance"),
    [("PNG", 0), ("BMP", 0), ("TIFF", 0), ("WEBP", 6), ("JPEG", 6)],
)
def test_formats_decode_to_the_source_pixels(fmt: str, tolerance: int) -> None:
    source = smooth_rgb(64, 48)
    decoded = decode_image(encode(Image.fromarray(source), fmt), 48, 3)
    expected = source[:, 8:56]  # the shorter side is already 48: the centre 48 x 48 is kept
    difference = np.abs(decoded.astype(int) - expected.astype(int))
    assert difference.mean() <= tolerance / 3 and difference.max() <= 4 * tolerance + 1


def test_gif_decodes_its_palette_colours() -> None:
    source = np.zeros((48, 64, 3), np.uint8)
    source[:, :32] = (200, 30, 30)
    source[:24, 32:] = (20, 220, 90)
    decoded = decode_image(encode(Image.fromarray(source), "GIF"), 48, 3)
    np.testing.assert_array_equal(decoded, source[:, 8:56])


def test_transparency_composites_on_black() -> None:
    rgba = Image.new("RGBA", (10, 10), (255, 255, 255, 0))
    assert decode_image(encode(rgba, "PNG"), 10, 1).max() == 0


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


def test_cmyk_and_progressive_jpeg() -> None:
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # pure red in CMYK
    decoded = decode_image(encode(cmyk, "JPEG"), 16, 3)
    assert decoded[..., 0].mean() > 200 and decoded[..., 1].mean() < 60
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (0, 0, 250)).save(buffer, format="JPEG", progressive=True)
    assert decode_image(buffer.getvalue(), 16, 3)[..., 2].mean() > 200


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((20, 40), dtype=np.uint8)
    pixels[:, :20] = 255  # bright left half, stored landscape
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the bright half ends up on top
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_image(buffer.getvalue(), 20, 1)[:, :, 0].astype(int)
    assert decoded[:10].mean() > decoded[10:].mean() + 100


def test_palette_with_transparency_and_animation_first_frame() -> None:
    palette = Image.new("P", (10, 10), 1)
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    palette.info["transparency"] = 1
    assert decode_image(encode(palette, "PNG"), 10, 1).max() == 0
    frames = [Image.new("L", (10, 10), 250), Image.new("L", (10, 10), 5)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert decode_image(buffer.getvalue(), 10, 1).min() > 200


def test_decompression_bomb_is_refused_before_decoding() -> None:
    huge = Image.new("1", (9000, 9000))  # 81 Mpx, tiny as a 1-bit PNG
    with pytest.raises(ImageDecodeError, match=r"9000x9000 pixels exceeds the limit"):
        decode_image(encode(huge, "PNG"), 28, 1)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_greys_are_scaled_to_8_bits_not_clipped(fmt: str) -> None:
    # 0..4000: clipping would saturate everything above 255, scaling maps 4000 to 255.
    ramp = np.linspace(0, 4000, 16 * 16).astype(np.uint16).reshape(16, 16)
    decoded = decode_image(encode(Image.fromarray(ramp), fmt), 16, 1)[:, :, 0]
    np.testing.assert_array_equal(decoded, (ramp * (255 / 4000)).astype(np.uint8))


def test_grey_with_alpha() -> None:
    grey_alpha = Image.new("LA", (8, 8), (200, 255))
    assert decode_image(encode(grey_alpha, "PNG"), 8, 3).min() == 200
