"""Percentile rescaling and band medians."""

import numpy as np

from srpipe.data.normalise import BandScale, band_medians, percentile_scale


def test_percentile_scale_maps_the_percentiles_to_0_and_1_and_clips():
    pixels = np.stack([np.arange(101, dtype=np.float32) * (b + 1) for b in range(4)], axis=1)
    scale = percentile_scale(pixels, (1, 99))
    np.testing.assert_allclose(scale.low, [1, 2, 3, 4])
    np.testing.assert_allclose(scale.high, [99, 198, 297, 396])
    out = scale.apply(pixels.T[None], band_axis=1)[0]
    assert out.min() == 0 and out.max() == 1
    np.testing.assert_allclose(out[:, 50], 0.5, atol=1e-6)


def test_invert_undoes_apply_inside_the_range():
    scale = BandScale(np.array([0.1, 0.2, 0.3, 0.4], np.float32), np.array([0.5, 0.6, 0.7, 0.8], np.float32))
    x = np.random.default_rng(0).uniform(0.4, 0.5, (3, 4, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(scale.invert(scale.apply(x, 1), 1), x, atol=1e-6)
    assert BandScale.from_json(scale.to_json()).low.tolist() == scale.low.tolist()


def test_band_medians_ignore_masked_pixels():
    values = np.zeros((10, 10, 4), np.float32)
    values[:5] = 1.0
    values[5:] = 100.0  # "clouds"
    mask = np.zeros((10, 10), bool)
    mask[:5] = True
    assert band_medians(values, mask) == [1.0] * 4


def test_region_factors_are_band_medians_and_folding_them_equals_dividing_first():
    from srpipe.data.normalise import fold_factors, region_factors

    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 1, (1001, 4)).astype(np.float32) * np.array([1, 2, 3, 4], np.float32)
    factors = region_factors(pixels)
    np.testing.assert_allclose(factors, np.median(pixels, axis=0), rtol=1e-6)
    scale = percentile_scale(pixels / factors, (1, 99))
    x = rng.uniform(0, 4, (2, 4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(
        fold_factors(scale, factors).apply(x, 1), scale.apply(x / factors[:, None, None], 1), atol=1e-5
    )
