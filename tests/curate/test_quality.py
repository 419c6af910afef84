"""Noise scores on arrays with known answers: identity, a brightness offset, a shift, the thresholds."""

import numpy as np
import pytest

from srpipe.curate.quality import SCORE_NAMES, bicubic_upsample, pair_scores, passes_noise_filter


def texture(seed: int = 0, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    return np.stack([ndimage.gaussian_filter(rng.uniform(0, 1, (size, size)), 1.5) for _ in range(4)]).astype(
        np.float32
    )


def test_identical_images_score_perfectly():
    x = texture()
    s = pair_scores(x, x, max_shift_px=2)
    assert s.ssim == pytest.approx(1.0) and s.shift == (0, 0) and s.psnr > 60


def test_a_brightness_offset_is_corrected_and_shows_in_the_mse_ratio():
    x = texture()
    s = pair_scores(x, x + 0.1, max_shift_px=1)
    assert s.mse == pytest.approx(0.01, rel=1e-3)
    assert s.mse_corrected < 1e-8 and s.mse_ratio > 1e4
    assert s.ssim == pytest.approx(1.0, abs=1e-4)


def test_the_best_shift_registers_a_misaligned_reference():
    x = texture(size=52)
    moved = np.roll(x, (1, -2), axis=(1, 2))
    s = pair_scores(x[:, 4:-4, 4:-4], moved[:, 4:-4, 4:-4], max_shift_px=2)
    assert s.shift == (1, -2) and s.mse_corrected < 1e-8


def test_noise_filter_keeps_only_scores_inside_every_threshold():
    scores = np.array(
        [
            [0.01, 0.001, 10.0, 30.0, 0.8],  # ratio at the limit: dropped
            [0.01, 0.005, 2.0, 23.0, 0.8],  # kept
            [0.01, 0.005, 2.0, 9.0, 0.8],  # PSNR too low
            [0.01, 0.005, 2.0, 23.0, 0.1],  # SSIM too low
        ],
        np.float32,
    )
    assert len(SCORE_NAMES) == scores.shape[1]
    assert passes_noise_filter(scores, 0.2, 10.0, 10.0).tolist() == [False, True, False, False]


def test_bicubic_upsampling_keeps_a_flat_image_flat_and_scales_the_shape():
    up = bicubic_upsample(np.full((3, 4, 8, 8), 0.25, np.float32), 4)
    assert up.shape == (3, 4, 32, 32)
    np.testing.assert_allclose(up, 0.25, atol=1e-6)
