"""The affine augmentation: kornia's warp and kornia's distribution, without its framework."""

from __future__ import annotations

import pytest
import torch
from kornia.geometry.transform import get_affine_matrix2d
from kornia.geometry.transform import warp_affine as kornia_warp_affine

from imgpipe.training.augment import RandomAffine, warp_affine


@pytest.mark.parametrize(("height", "width"), [(28, 28), (20, 36), (37, 16)])
def test_warp_is_kornias_for_the_same_parameters(height: int, width: int) -> None:
    torch.manual_seed(0)
    images = torch.rand(16, 3, height, width)
    angle, zoom, shift = RandomAffine(degrees=40, translate=0.25, scale=0.3).draw(images)
    centre = torch.tensor([(width - 1) / 2, (height - 1) / 2]).expand(16, 2)
    matrix = get_affine_matrix2d(shift, centre, torch.stack([zoom, zoom], 1), angle)
    expected = kornia_warp_affine(images, matrix[:, :2], (height, width), align_corners=False)
    assert torch.allclose(warp_affine(images, angle, zoom, shift), expected, atol=1e-5)
    # and the comparison can fail: the opposite rotation is far off
    assert (warp_affine(images, -angle, zoom, shift) - expected).abs().max() > 0.1


def test_draws_are_uniform_within_the_ranges_per_image() -> None:
    torch.manual_seed(0)
    images = torch.zeros(4000, 1, 20, 40)
    angle, zoom, shift = RandomAffine(degrees=15, translate=0.1, scale=0.2).draw(images)
    for drawn, low, high in [
        (angle, -15, 15),
        (zoom, 0.8, 1.2),
        (shift[:, 0], -4, 4),  # a tenth of the width
        (shift[:, 1], -2, 2),  # and of the height
    ]:
        assert low <= drawn.min() < low + 0.05 * (high - low)
        assert high - 0.05 * (high - low) < drawn.max() <= high
        assert abs(float(drawn.mean()) - (low + high) / 2) < 0.03 * (high - low)
    assert torch.corrcoef(torch.stack([angle, zoom, *shift.T]))[0, 1:].abs().max() < 0.06


def test_switched_off_parts_draw_nothing() -> None:
    images = torch.zeros(64, 1, 8, 8)
    angle, zoom, shift = RandomAffine(degrees=0, translate=0, scale=0.1).draw(images)
    assert not angle.any() and not shift.any() and zoom.std() > 0


def test_identity_parameters_leave_the_image() -> None:
    images = torch.rand(4, 2, 9, 13)
    none = torch.zeros(4)
    assert torch.allclose(warp_affine(images, none, none + 1, torch.zeros(4, 2)), images, atol=1e-6)
