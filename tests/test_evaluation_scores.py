"""Scores inside the border crop: the border never counts, cPSNR shifts within the crop's margin."""

import pytest
import torch

from srpipe.metrics import score


def test_scores_ignore_the_border_and_cpsnr_forgives_a_shift_and_a_bias():
    torch.manual_seed(0)
    hr = 0.2 + 0.6 * torch.nn.functional.interpolate(torch.rand(2, 4, 16, 16), size=(64, 64), mode="bicubic").clamp(
        0, 1
    )
    mask = torch.ones(2, 64, 64, dtype=torch.bool)
    dark_border = hr.clone()
    dark_border[..., :8, :] = 0
    inside = score(dark_border, hr, mask, border=8, max_shift=3)
    assert inside["mse"] == pytest.approx([0, 0], abs=1e-12) and inside["ssim"] == pytest.approx([1, 1], abs=1e-5)
    assert score(dark_border, hr, mask, border=4, max_shift=3)["mse"].min() > 1e-3
    shifted = torch.roll(hr, shifts=(2, -1), dims=(2, 3)) + 0.05
    plain, registered = score(shifted, hr, mask, 8, 3)["psnr"], score(shifted, hr, mask, 8, 3)["cpsnr"]
    assert (registered > 60).all() and (plain < 30).all()
    with pytest.raises(ValueError, match="max shift"):
        score(hr, hr, mask, border=2, max_shift=3)
