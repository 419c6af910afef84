"""Checks at native resolution: consistency of a perfect upsampler, sharpness against a blur, planted seams found."""

import numpy as np
import pytest
from rasterio.transform import from_origin
from scipy import ndimage

from srpipe.evaluation.native import (
    bicubic_up,
    consistency_by_band,
    core_edges_px,
    gradient_ratio,
    high_frequency_ratio,
    seam_percentile,
    seam_ratio,
)


def texture(shape: tuple[int, ...], seed: int = 0, sigma: float = 1.5) -> np.ndarray:
    """(C, H, W) float32 smooth random texture around 0.2 reflectance."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.normal(size=shape), (0, sigma, sigma))
    return (0.2 + 0.05 * x / x.std()).astype(np.float32)


def test_pixel_replication_is_exactly_consistent_under_area_mean_degradation():
    lr = texture((4, 30, 40))
    sr = lr.repeat(4, axis=1).repeat(4, axis=2)
    scores = consistency_by_band(sr, lr, 4, psf_sigma_px=0.0)
    np.testing.assert_allclose(scores["mae"], 0, atol=1e-7)
    np.testing.assert_allclose(scores["bias"], 0, atol=1e-7)
    assert min(scores["psnr_db"]) > 90
    assert scores["sam_deg"] < 0.05
    assert scores["n_pixels"] == 30 * 40


def test_a_brightened_band_shows_as_bias_in_that_band_only():
    lr = texture((4, 30, 40))
    sr = bicubic_up(lr, 4)
    sr[2] += 0.01
    scores = consistency_by_band(sr, lr, 4, psf_sigma_px=2.0)
    assert scores["bias"][2] == pytest.approx(0.01, abs=2e-3)
    assert max(abs(b) for i, b in enumerate(scores["bias"]) if i != 2) < 2e-3
    assert scores["psnr_db"][2] < min(scores["psnr_db"][:2])


def test_nodata_sr_pixels_are_left_out_with_their_footprint():
    lr = texture((4, 20, 20))
    sr = lr.repeat(4, axis=1).repeat(4, axis=2)
    sr[:, :8, :8] = np.nan  # the top-left 2 x 2 S2 pixels
    scores = consistency_by_band(sr, lr, 4, psf_sigma_px=0.0)
    assert scores["n_pixels"] == 400 - 4
    np.testing.assert_allclose(scores["mae"], 0, atol=1e-7)


def test_an_image_is_sharper_than_its_blurred_self_and_as_sharp_as_itself():
    image = texture((4, 128, 128), sigma=1.0)
    blurred = ndimage.gaussian_filter(image, (0, 2, 2))
    assert (gradient_ratio(image, blurred) > 1.5).all()
    assert (high_frequency_ratio(image, blurred) > 10).all()
    np.testing.assert_allclose(gradient_ratio(image, image), 1)
    np.testing.assert_allclose(high_frequency_ratio(image, image), 1)
    with pytest.raises(ValueError, match="without NaN"):
        gradient_ratio(np.full_like(image, np.nan), image)


def test_core_edges_are_the_inner_boundaries_on_the_mosaic_grid():
    cores = [(x, y, x + 2000, y + 2000) for x in (0.0, 2000.0, 4000.0) for y in (0.0, 2000.0)]
    cols, rows = core_edges_px(cores, from_origin(0, 4000, 2.5, 2.5), 2400, 1600)
    np.testing.assert_array_equal(cols, [800, 1600])
    np.testing.assert_array_equal(rows, [800])


def test_a_planted_seam_is_found_and_a_seamless_image_gives_about_one():
    image = texture((4, 300, 300), seed=1)
    edges = np.array([100, 200])
    seamless = seam_ratio(image, edges, axis=-1)
    np.testing.assert_allclose(seamless, 1, atol=0.15)
    seamed = image.copy()
    seamed[:, :, 100:200] += 0.1  # the middle tile is brighter: steps at columns 100 and 200
    assert (seam_ratio(seamed, edges, axis=-1) > 2.5).all()
    assert (seam_percentile(seamed, edges, axis=-1) == 100).all()  # stronger than every ordinary column
    ranks = [seam_percentile(image, np.array([b]), axis=-1).mean() for b in range(20, 280, 13)]
    assert np.mean(ranks) == pytest.approx(50, abs=12)  # an ordinary column ranks in the middle, on average
    # a brightened column band adds no step between rows
    np.testing.assert_allclose(seam_ratio(seamed, edges, axis=-2), seam_ratio(image, edges, axis=-2), rtol=1e-5)


def test_same_phase_pairs_remove_bicubics_sub_pixel_bias_at_core_edges():
    up = bicubic_up(texture((4, 300, 300), seed=2, sigma=1.0), 4)
    edges = np.array([400, 800])  # on S2 pixel edges, as tile cores are
    assert seam_ratio(up, edges, axis=-1).mean() < 0.97  # bicubic's steps are smaller across S2 pixel edges ...
    assert seam_ratio(up, edges, axis=-1, period=4).mean() == pytest.approx(1, abs=0.05)  # ... like with like: ~1
