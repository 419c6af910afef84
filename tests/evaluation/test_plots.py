"""Evaluation plots: true colour, the best/median/worst pick, and every plot as a PNG of the size its layout sets."""

import io

import numpy as np
import pytest
from PIL import Image

from srpipe.evaluation import plots

DPI = 90  # plots._DPI: a figure of w x h inches is a (w * 90) x (h * 90) px PNG


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in px of PNG bytes; fails unless they decode as a PNG."""
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return image.size


@pytest.fixture
def samples() -> dict[str, np.ndarray]:
    """Six tiny samples from three tiles: labels (6, 4, 16, 16), 4x coarser S2 frames, SR and bicubic, scores in dB."""
    rng = np.random.default_rng(0)
    label = rng.random((6, 4, 16, 16), dtype=np.float32)
    noise = rng.standard_normal((2, *label.shape)).astype(np.float32)
    baseline_cpsnr = np.array([25.0, 26.0, 27.0, 28.0, 29.0, 30.0])
    return {
        "label": label,
        "s2": label.reshape(6, 4, 4, 4, 4, 4).mean(axis=(3, 5)),
        "sr": np.clip(label + 0.05 * noise[0], 0, 1),
        "bicubic": np.clip(label + 0.1 * noise[1], 0, 1),
        "baseline_cpsnr": baseline_cpsnr,
        "sr_cpsnr": baseline_cpsnr + np.array([1.0, -0.5, 2.0, 0.2, 0.4, 3.0]),
        "tiles": np.array(["t1", "t2", "t3"] * 2),
    }


def test_true_colour_takes_bands_2_1_0_clips_to_unit_range_and_applies_gamma_0_7():
    image = np.zeros((4, 1, 1), np.float32)
    image[:, 0, 0] = [0.25, 1.5, -0.2, 0.9]  # B02, B03, B04, B08
    assert plots.true_colour(image)[0, 0] == pytest.approx([0.0, 1.0, 0.25**0.7])


def test_ranked_indices_picks_best_median_worst_by_gain_and_skips_nan():
    gain = np.array([0.5, np.nan, 3.0, -1.0, 1.0, 2.0, 0.0])
    assert plots.ranked_indices(gain) == [("best", 2), ("median", 0), ("worst", 3)]
    assert plots.ranked_indices(gain, per_rank=2) == [
        ("best", 2),
        ("best", 5),
        ("median", 4),
        ("median", 0),
        ("worst", 6),
        ("worst", 3),
    ]


def test_ranked_indices_on_two_samples_keeps_best_and_worst_and_fails_without_finite_gain():
    assert plots.ranked_indices(np.array([1.0, 2.0])) == [("best", 1), ("worst", 0)]
    with pytest.raises(ValueError, match="no sample has a finite gain"):
        plots.ranked_indices(np.array([np.nan]))


def test_sample_grid_has_one_row_per_picked_sample_and_four_columns(samples):
    args = (samples["s2"], samples["bicubic"], samples["sr"], samples["label"], samples["sr_cpsnr"])
    one = plots.sample_grid(*args, samples["baseline_cpsnr"], samples["tiles"])
    two = plots.sample_grid(*args, samples["baseline_cpsnr"], per_rank=2)
    assert png_size(one) == (round(4 * 3.0 * DPI), round(3 * 3.1 * DPI))
    assert png_size(two) == (round(4 * 3.0 * DPI), round(6 * 3.1 * DPI))


def test_score_histograms_scatter_band_distributions_and_trust_map_are_pngs_of_their_layout(samples):
    scores = {"cpsnr": samples["sr_cpsnr"], "psnr": samples["sr_cpsnr"] - 1, "ssim": np.linspace(0.5, 0.9, 6)}
    base = {"cpsnr": samples["baseline_cpsnr"], "psnr": samples["baseline_cpsnr"] - 1, "ssim": np.full(6, 0.6)}
    assert png_size(plots.metric_histograms(scores, base)) == (round(3 * 4.2 * DPI), round(3.4 * DPI))
    scatter = plots.score_scatter(samples["baseline_cpsnr"], samples["sr_cpsnr"], samples["tiles"])
    assert png_size(scatter) == (round(5.6 * DPI), round(5.0 * DPI))
    bands = plots.band_distributions(samples["sr"], samples["s2"], samples["label"])
    assert png_size(bands) == (round(4 * 4.0 * DPI), round(3.3 * DPI))
    views = np.stack([samples["sr"][0]] * 7 + [samples["bicubic"][0]])
    assert png_size(plots.trust_map(views, "sample 0")) == (round(8.4 * DPI), round(3.8 * DPI))


def test_spread_vs_error_has_a_row_per_picked_sample_and_the_decile_panel(samples):
    error = np.abs(samples["sr"] - samples["label"]).mean(axis=1)
    error[:, :2] = np.nan  # off the scored pixels
    deciles = np.linspace(0.01, 0.1, 10)
    png = plots.spread_vs_error(samples["sr"], error, error * 0.5, deciles, deciles * 2, 0.87)
    assert png_size(png) == (round(13.0 * DPI), round(3 * 3.0 * DPI))
    assert png_size(plots.spread_vs_error(samples["sr"][:2], error[:2], error[:2], deciles, deciles, None)) == (
        round(13.0 * DPI),
        round(2 * 3.0 * DPI),  # two samples: the highest and the lowest spread
    )
    with pytest.raises(ValueError, match=r"expected \(N, 4, H, W\) SR and \(N, H, W\) maps"):
        plots.spread_vs_error(samples["sr"], error, error[:, :8], deciles, deciles, 0.5)


def test_training_curves_plot_every_numeric_key_three_per_row_and_need_one():
    history = [{"epoch": e, "train_loss": 1 / (e + 1), "val_cpsnr": 20.0 + e, "note": "warm-up"} for e in range(4)]
    assert png_size(plots.training_curves(history)) == (round(2 * 4.2 * DPI), round(3.2 * DPI))
    longer = [{**row, "lr": 1e-3, "val_ssim": 0.5} for row in history]
    assert png_size(plots.training_curves(longer)) == (round(3 * 4.2 * DPI), round(2 * 3.2 * DPI))
    with pytest.raises(ValueError, match="no numeric key besides 'epoch'"):
        plots.training_curves([{"epoch": 1, "note": "x", "done": True}])


def test_plots_name_the_shape_they_expect():
    with pytest.raises(ValueError, match=r"expected \(N, 4, H, W\)"):
        plots.band_distributions(np.zeros((2, 3, 4, 4)), np.zeros((2, 4, 1, 1)), np.zeros((2, 4, 4, 4)))
    with pytest.raises(ValueError, match=r"expected \(V >= 2, 4, H, W\)"):
        plots.trust_map(np.zeros((1, 4, 8, 8)))
    with pytest.raises(ValueError, match="shapes differ"):
        plots.score_scatter(np.zeros(3), np.zeros(3), ["t1", "t2"])
    with pytest.raises(ValueError, match="no metric in both"):
        plots.metric_histograms({"cpsnr": np.zeros(2)}, {"ssim": np.zeros(2)})


def test_save_png_writes_the_bytes_and_leaves_no_temporary_file(tmp_path):
    png = plots.training_curves([{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}])
    path = plots.save_png(tmp_path / "curves.png", png)
    assert path.read_bytes() == png
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]
