"""One PSNR/SSIM definition: scikit-image's Gaussian SSIM when all is clear, blind to masked-out pixels, one path;
scores inside the border crop: the border never counts, cPSNR shifts within the crop's margin."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from srpipe.metrics import masked_psnr, masked_ssim, psnr, score, ssim


def pair(seed: int = 0, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Two (4, size, size) float32 images in [0, 1]: a smooth texture and a noisy copy of it."""
    rng = np.random.default_rng(seed)
    x = np.stack([ndimage.gaussian_filter(rng.uniform(0, 1, (size, size)), 2) for _ in range(4)])
    x = (x - x.min()) / (x.max() - x.min())
    y = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1)
    return x.astype(np.float32), y.astype(np.float32)


def cloud(size: int = 40) -> np.ndarray:
    """(size, size) bool mask, clear except a blob and a stripe."""
    yy, xx = np.mgrid[:size, :size]
    return ~(((yy - 12) ** 2 + (xx - 25) ** 2 < 40) | (xx < 3))


def skimage_ssim(x: np.ndarray, y: np.ndarray) -> float:
    return structural_similarity(  # in float64: scikit-image keeps float32 inputs in float32
        y.astype(np.float64),
        x.astype(np.float64),
        data_range=1.0,
        channel_axis=0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unmasked_ssim_is_scikit_images_gaussian_ssim(seed):
    x, y = pair(seed)
    expected = skimage_ssim(x, y)
    assert ssim(x, y) == pytest.approx(expected, abs=1e-5)  # the numpy path computes in float32
    batch = masked_ssim(torch.from_numpy(x)[None], torch.from_numpy(y)[None])  # float32 torch path (training)
    assert batch.item() == pytest.approx(expected, abs=1e-5)
    assert 0.3 < expected < 0.99


def test_torch_and_numpy_paths_agree_on_masked_random_images():
    images = [pair(seed) for seed in range(3)]
    mask = cloud()
    x = torch.from_numpy(np.stack([a for a, _ in images]))
    y = torch.from_numpy(np.stack([b for _, b in images]))
    m = torch.from_numpy(np.stack([mask] * 3))
    torch.testing.assert_close(
        masked_ssim(x, y, m), torch.tensor([ssim(a, b, mask) for a, b in images]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        masked_psnr(x, y, m), torch.tensor([psnr(a, b, mask) for a, b in images]), atol=1e-4, rtol=0
    )


def test_masked_out_pixels_do_not_change_the_scores():
    x, y = pair()
    mask = cloud()
    rng = np.random.default_rng(5)
    x2, y2 = x.copy(), y.copy()
    x2[:, ~mask], y2[:, ~mask] = rng.uniform(0, 1, (2, 4, int((~mask).sum())))
    assert ssim(x2, y2, mask) == pytest.approx(ssim(x, y, mask), abs=1e-12)
    assert psnr(x2, y2, mask) == pytest.approx(psnr(x, y, mask), abs=1e-12)
    assert ssim(x2, y2) != pytest.approx(ssim(x, y), abs=1e-3)  # unmasked, the same change does count


def test_psnr_is_the_masked_mse_in_db_and_scikit_images_without_a_mask():
    x, y = pair()
    assert psnr(x, y) == pytest.approx(peak_signal_noise_ratio(y, x, data_range=1.0), abs=1e-4)
    mask = cloud()
    target = np.full_like(x, 0.5)
    pred = np.where(mask, 0.6, 0.0).astype(np.float32)[None].repeat(4, 0)
    assert psnr(pred, target, mask) == pytest.approx(20.0, abs=1e-4)
    assert psnr(target, target) == pytest.approx(100.0)


def test_ssim_of_an_image_with_itself_is_one_and_it_has_a_gradient():
    x, y = pair()
    assert ssim(x, x, cloud()) == pytest.approx(1.0, abs=1e-6)
    sr = torch.from_numpy(y)[None].requires_grad_()
    masked_ssim(sr, torch.from_numpy(x)[None], torch.from_numpy(cloud())[None]).sum().backward()
    assert sr.grad.abs().sum() > 0


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
