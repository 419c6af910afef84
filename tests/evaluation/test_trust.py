"""Trust numbers: Spearman of the spread against |SR - label| and the error per spread decile, on known examples."""

import numpy as np
import pytest

from srpipe.evaluation.trust import error_and_spread, trust_numbers


def test_a_spread_that_orders_the_errors_perfectly_has_spearman_1_and_rising_deciles():
    error = np.arange(1000, dtype=np.float64).reshape(10, 10, 10) / 1000
    trust = trust_numbers(error, np.sqrt(error) * 0.1)  # any increasing function of the error
    assert trust.spearman == pytest.approx(1.0) and trust.n_pixels == 1000 and trust.pixels == [100] * 10
    assert trust.mean_abs_error == pytest.approx([(100 * d + 49.5) / 1000 for d in range(10)])
    assert trust.decile_edges[0] == 0 and trust.decile_edges[-1] == pytest.approx(np.sqrt(0.999) * 0.1)
    assert trust_numbers(error, -error).spearman == pytest.approx(-1.0)


def test_a_spread_unrelated_to_the_error_has_spearman_near_0_and_flat_deciles():
    rng = np.random.default_rng(0)
    trust = trust_numbers(rng.random(100_000), rng.random(100_000))
    assert abs(trust.spearman) < 0.02 and np.ptp(trust.mean_abs_error) < 0.02


def test_tied_spreads_fill_equal_deciles_and_a_constant_spread_has_no_correlation():
    error = np.linspace(0, 1, 100)
    spread = np.where(error < 0.5, 0.0, error)  # half the pixels tie at zero spread
    trust = trust_numbers(error, spread)
    assert trust.pixels == [10] * 10 and trust.mean_spread[:5] == [0.0] * 5
    assert np.mean(trust.mean_abs_error[:5]) == pytest.approx(np.mean(error[:50]))
    assert trust_numbers(error, np.ones(100)).spearman is None
    assert trust_numbers(error, np.ones(100)).as_json()["spearman"] is None  # JSON has no NaN


def test_error_and_spread_are_band_means_on_the_clear_pixels_inside_the_border_crop():
    label = np.zeros((2, 4, 8, 8), np.float32)
    sr = label + np.array([0.1, 0.2, 0.3, 0.4], np.float32)[None, :, None, None]  # band mean |error| 0.25
    clear = np.ones((2, 8, 8), bool)
    clear[1, 3, 3] = False
    spread = np.full((2, 1, 8, 8), 0.05, np.float32)
    error, kept_spread = error_and_spread(sr, label, clear, spread, border=2)
    assert error.shape == kept_spread.shape == (2, 8, 8)
    assert np.isnan(error[:, :2]).all() and np.isnan(error[:, :, -2:]).all() and np.isnan(error[1, 3, 3])
    assert np.nanmax(np.abs(error - 0.25)) < 1e-6 and np.isfinite(error).sum() == 2 * 16 - 1
    np.testing.assert_array_equal(np.isnan(kept_spread), np.isnan(error))
    with pytest.raises(ValueError, match="need at least 2"):
        trust_numbers(error[:, :1], kept_spread[:, :1])
