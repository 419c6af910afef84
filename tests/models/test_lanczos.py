"""Lanczos sub-pixel shifts: integer shifts are rolls, and a shift is undone by its inverse inside the border."""

import pytest
import torch
import torch.nn.functional as F

from srpipe.models.lanczos import lanczos_kernel, lanczos_shift


@pytest.mark.parametrize(("dx", "dy"), [(1, 0), (0, -2), (3, 2), (-1, -1)])
def test_an_integer_shift_equals_a_roll_inside_the_border(dx, dy):
    x = torch.rand(2, 4, 24, 24)
    out = lanczos_shift(x, torch.tensor([[float(dx), float(dy)]] * 2))
    rolled = torch.roll(x, (dy, dx), (2, 3))
    torch.testing.assert_close(out[..., 4:-4, 4:-4], rolled[..., 4:-4, 4:-4], atol=1e-5, rtol=0)


def test_a_subpixel_shift_then_its_inverse_restores_the_image_inside_the_border():
    x = F.interpolate(torch.rand(2, 4, 6, 6), size=(48, 48), mode="bicubic")  # band-limited, as imagery is
    shifts = torch.tensor([[0.3, -0.7], [1.6, 0.45]])
    back = lanczos_shift(lanczos_shift(x, shifts), -shifts)
    assert (back - x)[..., 8:-8, 8:-8].abs().max() < 0.02


def test_kernel_taps_sum_to_one_and_a_zero_shift_is_the_identity():
    assert torch.allclose(lanczos_kernel(torch.tensor([0.0, 0.4, -1.3])).sum(1), torch.ones(3))
    x = torch.rand(1, 4, 16, 16)
    torch.testing.assert_close(lanczos_shift(x, torch.zeros(1, 2)), x)
