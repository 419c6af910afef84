"""Consistency with S2 (degrade, band MAE, spectral angle) and opensr-test's correctness shares."""

import numpy as np
import pytest
from scipy import ndimage

from srpipe.evaluation.s2_consistency import (
    consistency_scores,
    correctness_shares,
    degrade,
    gaussian_sigma_for_mtf,
    s2_psf_sigma_px,
    sample_psf_sigma_px,
)

SCALE = 4
SIGMA = 2.0  # the sample source's PSF at scale 4, in label pixels


def smooth(b: int = 2, size: int = 16, seed: int = 0) -> np.ndarray:
    """(b, 4, size, size) float32 smooth field in about [0.3, 0.6] (cubic zoom of an 8x coarser random grid)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.3, 0.6, (b, 4, max(size // 8, 2), max(size // 8, 2)))
    return ndimage.zoom(coarse, (1, 1, size / coarse.shape[-2], size / coarse.shape[-1]), order=3).astype(np.float32)


def texture(shape: tuple, seed: int, amplitude: float = 0.05) -> np.ndarray:
    """Fine random detail of standard deviation `amplitude`, correlated over ~1 px."""
    t = ndimage.gaussian_filter(np.random.default_rng(seed).normal(0, 1, shape), (0, 0, 1, 1))
    return (amplitude * t / t.std()).astype(np.float32)


def triplet(b: int = 2, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hr, lr_up, mask): a label with fine detail, its S2-like frame cubic-upsampled back, every pixel clear."""
    hr = np.clip(smooth(b, size) + texture((b, 4, size, size), 1), 0.05, 0.95)
    lr_up = ndimage.zoom(degrade(hr, SCALE, SIGMA), (1, 1, SCALE, SCALE), order=3).astype(np.float32)
    return hr, lr_up, np.ones((b, size, size), bool)


def test_the_psf_sigmas_follow_the_sample_and_the_gaussian_mtf():
    assert sample_psf_sigma_px(4) == pytest.approx(2.0)  # 0.5 S2 px
    assert gaussian_sigma_for_mtf(0.3) == pytest.approx(0.494, abs=1e-3)
    sigma = gaussian_sigma_for_mtf(0.3)
    assert np.exp(-2 * np.pi**2 * sigma**2 * 0.5**2) == pytest.approx(0.3)  # the MTF at Nyquist it was asked for
    assert s2_psf_sigma_px(4) == pytest.approx(4 * 0.494, abs=4e-3)
    with pytest.raises(ValueError, match="MTF"):
        gaussian_sigma_for_mtf(1.0)


def test_degrade_without_psf_undoes_a_nearest_upsample_exactly():
    x = np.random.default_rng(0).uniform(0, 1, (2, 4, 5, 6)).astype(np.float32)
    up = x.repeat(SCALE, axis=2).repeat(SCALE, axis=3)
    assert np.allclose(degrade(up, SCALE, 0.0), x, atol=1e-6)


def test_degrade_of_a_smooth_cubic_upsample_gives_back_the_frame():
    x = smooth(2, 16)
    up = ndimage.zoom(x, (1, 1, SCALE, SCALE), order=3)
    low = degrade(up, SCALE, SIGMA)
    assert low.shape == x.shape and low.dtype == np.float32
    assert np.abs(low - x)[..., 2:-2, 2:-2].max() < 0.01


def test_degrade_keeps_flux_and_spreads_a_point_by_the_psf():
    point = np.zeros((1, 1, 64, 64), np.float32)
    point[0, 0, 32, 32] = 1.0
    low = degrade(point, SCALE, SIGMA)
    assert low.sum() * SCALE**2 == pytest.approx(1.0, abs=1e-5)  # the area mean conserves the signal
    assert (low > 0.1 * low.max()).sum() > 1  # the PSF spreads one label pixel over several S2 pixels


def test_a_brightness_shifted_label_shows_its_shift_as_mae_and_bias():
    hr = smooth(2, 32)
    frame = degrade(hr, SCALE, SIGMA)
    mask = np.ones((2, 8, 8), bool)
    same = consistency_scores(hr, frame, mask, SCALE, SIGMA)
    assert np.allclose(same["mae"], 0, atol=1e-6) and np.allclose(same["sam_deg"], 0, atol=0.05)
    shift = np.array([0.03, -0.02, 0.01, 0.05], np.float32)
    out = consistency_scores(hr + shift[None, :, None, None], frame, mask, SCALE, SIGMA)
    assert out["mae"].shape == (2, 4) and out["sam_deg"].shape == (2,)
    assert np.allclose(out["mae"], np.abs(shift), atol=1e-5)
    assert np.allclose(out["bias"], shift, atol=1e-5)
    assert (out["sam_deg"] > 0.5).all()  # an offset turns the spectra
    gained = consistency_scores(hr * 1.1, frame, mask, SCALE, SIGMA)
    assert (gained["mae"] > 0.02).all() and np.allclose(gained["sam_deg"], 0, atol=0.05)  # a gain does not


def test_consistency_reads_only_clear_pixels_and_maps_lr_units():
    hr = smooth(1, 32)
    frame = degrade(hr, SCALE, SIGMA)
    mask = np.ones((1, 8, 8), bool)
    mask[0, :4] = False
    spoiled = frame.copy()
    spoiled[..., :4, :] = 1.0  # a cloud on the masked half
    assert np.allclose(consistency_scores(hr, spoiled, mask, SCALE, SIGMA)["mae"], 0, atol=1e-6)
    gain, offset = np.full(4, 2.0, np.float32), np.full(4, -0.1, np.float32)
    in_lr_units = (frame + 0.1) / 2  # frame = gain * lr + offset
    out = consistency_scores(hr, in_lr_units, mask, SCALE, SIGMA, lr_to_hr=(gain, offset))
    assert np.allclose(out["mae"], 0, atol=1e-6)
    none_clear = consistency_scores(hr, frame, np.zeros_like(mask), SCALE, SIGMA)
    assert np.isnan(none_clear["mae"]).all() and np.isnan(none_clear["sam_deg"]).all()


def test_consistency_refuses_a_frame_of_the_wrong_size():
    with pytest.raises(ValueError, match="does not match"):
        consistency_scores(smooth(1, 32), smooth(1, 16), np.ones((1, 16, 16), bool), SCALE, SIGMA)


def test_sr_equal_to_the_label_is_all_improvement():
    hr, lr_up, mask = triplet()
    soft = correctness_shares(hr, lr_up, hr, mask)
    assert (soft["improvement"] > 0.95).all()  # the softmin at T = 0.25 tops out at 0.965
    assert np.allclose(soft["improvement"] + soft["omission"] + soft["hallucination"], 1)
    hard = correctness_shares(hr, lr_up, hr, mask, soft=False)
    assert np.allclose(hard["improvement"], 1)


def test_sr_equal_to_the_upsampled_frame_is_all_omission():
    hr, lr_up, mask = triplet()
    exact = correctness_shares(lr_up, lr_up, hr, mask, harmonise=False, soft=False)
    assert np.allclose(exact["omission"], 1)
    harmonised = correctness_shares(lr_up, lr_up, hr, mask)  # histogram matching to HR adds some contrast
    assert (harmonised["omission"] > 0.6).all() and (harmonised["improvement"] < 0.15).all()


def test_invented_detail_and_noise_are_mostly_hallucination():
    hr, lr_up, mask = triplet()
    invented = lr_up + texture(hr.shape, seed=7)  # detail as strong as the label's, but not the label's
    noise = lr_up + np.random.default_rng(3).normal(0, 0.05, hr.shape).astype(np.float32)
    for sr in (invented, noise):
        out = correctness_shares(sr, lr_up, hr, mask)
        assert (out["hallucination"] > 0.6).all()
        assert (out["hallucination"] > out["omission"] + out["improvement"]).all()


def test_correctness_counts_only_clear_pixels_and_patches_work():
    hr, lr_up, mask = triplet()
    part = mask.copy()
    part[:, :32] = False
    sr = hr.copy()
    sr[:, :, :32] = lr_up[:, :, :32] + texture((2, 4, 32, 64), seed=9)  # hallucinated, but on masked pixels
    out = correctness_shares(sr, lr_up, hr, part, soft=False)
    assert np.allclose(out["improvement"], 1) and (out["n_pixels"] <= 32 * 64).all()
    patches = correctness_shares(hr, lr_up, hr, mask, patch_px=8, soft=False)
    assert np.allclose(patches["improvement"], 1)
    empty = correctness_shares(hr, lr_up, hr, np.zeros_like(mask))
    assert np.isnan(empty["improvement"]).all() and (empty["n_pixels"] == 0).all()
