"""Split-conformal intervals from the spread: coverage on held-out pixels of a known noise model, and the record."""

import numpy as np
import pytest

from srpipe.models.calibration import LEVELS, Calibration, coverage, fit, kept_pixels

TABLE = (0.8, 0.9, 0.95)


def _pixels(rng: np.random.Generator, n: int, noise_gain: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(4, n) |error| and spread of a known noise model: each pixel's error is Gaussian with sd 2 spread + 0.004 (a
    spread that ranks the errors, and errors where the views agree), times `noise_gain`; bands differ in scale."""
    scale = np.array([1.0, 1.5, 2.0, 3.0])[:, None]
    spread = rng.lognormal(-5.0, 0.8, (4, n)) * scale
    error = np.abs(rng.normal(0.0, 1.0, (4, n))) * (2 * spread + 0.004 * scale) * noise_gain
    return error, spread


def test_calibrated_on_one_split_the_intervals_cover_a_held_out_split_at_the_nominal_level():
    rng = np.random.default_rng(0)
    calibration = fit(*_pixels(rng, 40_000), samples=40, split="val", tiles=["a", "b"])
    held_out = coverage(*_pixels(rng, 200_000), calibration, TABLE)
    np.testing.assert_allclose(held_out, np.tile(TABLE, (4, 1)), atol=0.01)  # binomial sd ~0.002; calibration ~0.002
    # the same check catches intervals that do not hold: noise 1.5x the calibration's drops 90 % coverage below 75 %
    broken = coverage(*_pixels(rng, 200_000, noise_gain=1.5), calibration, TABLE)
    assert (broken[:, 1] < 0.75).all(), broken


def test_a_spread_that_ranks_the_errors_gives_narrower_intervals_where_the_views_agree():
    rng = np.random.default_rng(1)
    error, spread = _pixels(rng, 20_000)
    calibration = fit(error, spread, samples=20, split="val", tiles=["a"])
    widths = calibration.half_width(spread[None, :, :, None], 0.9)[0, :, :, 0]
    calm, busy = spread < np.median(spread, axis=1, keepdims=True), spread > np.quantile(spread, 0.9, 1, keepdims=True)
    assert all(widths[b][calm[b]].mean() < widths[b][busy[b]].mean() / 2 for b in range(4))
    q = np.array([calibration.quantile(level) for level in LEVELS])
    assert (np.diff(q, axis=0) >= 0).all()  # wider at higher levels, per band


def test_the_calibration_round_trips_through_json_and_names_its_levels():
    rng = np.random.default_rng(2)
    calibration = fit(*_pixels(rng, 1000), samples=3, split="val", tiles=["t2", "t1", "t1"])
    again = Calibration.from_json(calibration.to_json())
    assert again == calibration and again.tiles == ("t1", "t2") and again.pixels == 1000
    with pytest.raises(ValueError, match=r"interval level 0.995 is not calibrated; levels: 0.5..0.99 by 0.01"):
        calibration.quantile(0.995)
    with pytest.raises(ValueError, match="needs >= 100 labelled pixels per band; the val split has 50"):
        fit(*_pixels(rng, 50), samples=1, split="val", tiles=["t1"])


def test_kept_pixels_are_the_clear_label_pixels_inside_the_border_crop():
    sr, label, spread = (np.full((2, 4, 8, 8), v, np.float32) for v in (0.5, 0.25, 0.1))
    clear = np.ones((2, 8, 8), bool)
    clear[0, 3, 3] = False
    error, kept_spread = kept_pixels(sr, label, clear, spread, border=2)
    assert error.shape == kept_spread.shape == (4, 2 * 16 - 1)
    assert (error == 0.25).all() and np.allclose(kept_spread, 0.1)
