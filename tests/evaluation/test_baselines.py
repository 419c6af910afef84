"""Baselines: per-pixel latest / closest / median clear values, in label units; unsharp masking tuned on scores."""

import torch

from srpipe.evaluation import baselines as bl


def _stack():
    """Two samples of 3 frames with constant values 0.1, 0.2, 0.3 (chronological); frame 2 cloudy on the left half."""
    lr = torch.stack([torch.full((2, 4, 8, 8), v) for v in (0.1, 0.2, 0.3)], 1)
    mask = torch.ones(2, 3, 8, 8, dtype=torch.bool)
    mask[:, 2, :, :4] = False
    dates = [["2016-06-01", "2016-07-01", "2016-08-01"]] * 2
    return lr, mask, dates


def test_latest_closest_and_median_pick_per_pixel_clear_values_and_map_to_label_units():
    lr, mask, dates = _stack()
    identity = (torch.ones(4), torch.zeros(4))
    out = bl.simple_baselines(lr, mask, dates, ["2016-06-05", "2016-07-30"], 2, identity)
    assert set(out) == set(bl.SIMPLE) and out["bicubic_latest"].shape == (2, 4, 16, 16)
    latest = out["bicubic_latest"]
    assert torch.allclose(latest[:, :, 4:12, :2], torch.tensor(0.2)) and torch.allclose(
        latest[:, :, 4:12, -2:], torch.tensor(0.3)
    )
    closest = out["bicubic_closest"]
    assert torch.allclose(closest[0, :, 4:12, 4:12], torch.tensor(0.1))  # June 5th: the June frame
    assert torch.allclose(closest[1, :, 4:12, -2:], torch.tensor(0.3))  # July 30th: August, where it is clear
    assert torch.allclose(closest[1, :, 4:12, :2], torch.tensor(0.2))  # ... and July where August is cloudy
    doubled = bl.simple_baselines(
        lr, mask, dates, ["2016-06-05"] * 2, 2, (torch.full((4,), 2.0), torch.full((4,), 0.1))
    )
    assert torch.allclose(doubled["bicubic_median"], 2 * out["bicubic_median"] + 0.1, atol=1e-6)


def test_unsharp_tuning_finds_the_sharpening_that_undoes_a_blur():
    torch.manual_seed(0)
    hr = torch.rand(8, 4, 32, 32)
    blurred = bl.gaussian_blur(hr, 1.0)
    images = {name: blurred for name in bl.SIMPLE}
    mask = torch.ones(8, 32, 32, dtype=torch.bool)

    def neg_mse(image, label, m):
        return -((image - label) ** 2).mean((1, 2, 3))

    params, best = bl.tune_unsharp([(images, hr, mask)], neg_mse)
    assert params.amount > 0 and best > float(neg_mse(blurred, hr, mask).mean())
    sharp = bl.tune_unsharp([({n: hr for n in bl.SIMPLE}, hr, mask)], neg_mse)[0]
    assert sharp.amount == 0.0  # nothing to undo: no sharpening
