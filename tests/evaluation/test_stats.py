"""Evaluation statistics: the cluster bootstrap, win shares, the Kelvins score and the JSON summary."""

import json
import time

import numpy as np
import pytest

from srpipe.evaluation.stats import (
    bootstrap_ci,
    bootstrap_means,
    kelvins_score,
    summarise,
    win_share,
    win_share_ci,
)


def tiles(n_groups: int = 10, per_group: int = 100) -> np.ndarray:
    """(n_groups * per_group,) tile ids, 'tile_00' ... in blocks."""
    return np.repeat([f"tile_{g:02d}" for g in range(n_groups)], per_group)


def clustered(n_groups: int = 10, per_group: int = 100, tile_sd: float = 1.0, seed: int = 0) -> np.ndarray:
    """(N,) values whose spread is mostly between tiles: tile effect (sd `tile_sd`) plus small sample noise."""
    rng = np.random.default_rng(seed)
    return np.repeat(rng.normal(0, tile_sd, n_groups), per_group) + rng.normal(0, 0.1, n_groups * per_group)


def test_the_cluster_interval_is_far_wider_than_the_naive_one_when_tiles_differ():
    values, groups = clustered(), tiles()
    low, high = bootstrap_ci(values, groups)
    naive_low, naive_high = bootstrap_ci(values, np.arange(values.size).astype(str))  # every sample its own group
    assert low < values.mean() < high
    assert (high - low) > 5 * (naive_high - naive_low)


def test_the_interval_covers_the_true_mean_about_as_often_as_its_level():
    covered = 0
    for seed in range(100):
        low, high = bootstrap_ci(clustered(n_groups=20, per_group=5, seed=seed), tiles(20, 5), n_boot=500, seed=seed)
        covered += low <= 0.0 <= high
    assert 80 <= covered <= 100  # percentile intervals with 20 clusters under-cover a little


def test_the_bootstrap_is_seeded_and_one_group_collapses_to_the_mean():
    values, groups = clustered(), tiles()
    assert bootstrap_ci(values, groups, seed=3) == bootstrap_ci(values, groups, seed=3)
    one = np.array([1.0, 2.0, 3.0])
    assert bootstrap_ci(one, np.array(["a", "a", "a"])) == pytest.approx((2.0, 2.0))


def test_bootstrap_means_weight_groups_by_their_samples():
    # group a: one sample of 0; group b: three samples of 1 -> resamples (a, a), (a, b)/(b, a), (b, b) give 0, 3/4, 1
    means = bootstrap_means(np.array([0.0, 1, 1, 1]), np.array(["a", "b", "b", "b"]), n_boot=4000)
    assert set(np.round(means, 6)) == {0.0, 0.75, 1.0}
    assert np.mean(means == 0.75) == pytest.approx(0.5, abs=0.05)


def test_the_bootstrap_of_1000_samples_in_10_tiles_is_fast():
    values, groups = clustered(), tiles()
    start = time.perf_counter()
    bootstrap_ci(values, groups, n_boot=2000)
    assert time.perf_counter() - start < 0.5


def test_non_finite_values_and_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci(np.array([1.0, np.nan]), np.array(["a", "b"]))
    with pytest.raises(ValueError, match="must both be"):
        bootstrap_ci(np.ones(3), np.array(["a", "b"]))


def test_win_share_counts_strict_wins_and_its_interval_brackets_it():
    sr, base = np.array([2.0, 1.0, 3.0, 0.0]), np.array([1.0, 1.0, 2.0, 1.0])
    assert win_share(sr, base) == 0.5
    groups = tiles(10, 100)
    rng = np.random.default_rng(1)
    sr, base = rng.normal(1, 1, groups.size), rng.normal(0, 1, groups.size)
    low, high = win_share_ci(sr, base, groups)
    assert 0 <= low <= win_share(sr, base) <= high <= 1


def test_kelvins_score_is_the_mean_ratio_of_baseline_to_sr_cpsnr():
    assert kelvins_score(np.array([30.0, 40.0]), np.array([30.0, 50.0])) == pytest.approx((1 + 0.8) / 2)
    assert kelvins_score(np.array([30.0]), np.array([33.0])) < 1  # SR better than the baseline scores below 1


def test_summarise_gives_paired_differences_and_serialises_to_json():
    groups = tiles(10, 20)
    rng = np.random.default_rng(2)
    bicubic = 30 + np.repeat(rng.normal(0, 2, 10), 20)  # tiles differ a lot
    sr = bicubic + 0.5 + rng.normal(0, 0.05, groups.size)  # a small, steady gain on every sample
    out = summarise({"bicubic": bicubic, "sr": sr}, groups, reference="bicubic")
    json.dumps(out)  # plain floats and lists only
    assert out["n_samples"] == 200 and out["n_groups"] == 10 and out["reference"] == "bicubic"
    diff = out["methods"]["sr"]["diff"]
    assert diff["mean"] == pytest.approx(0.5, abs=0.02)
    assert 0.45 < diff["ci"][0] < 0.5 < diff["ci"][1] < 0.55  # paired: the tile spread cancels
    low, high = out["methods"]["sr"]["ci"]
    assert high - low > 1.0  # the unpaired mean keeps the tile spread
    assert out["methods"]["sr"]["beats_reference_share"]["mean"] == 1.0
    assert "diff" not in out["methods"]["bicubic"]
    lower = summarise({"bicubic": bicubic, "sr": sr}, groups, reference="bicubic", higher_is_better=False)
    assert lower["methods"]["sr"]["beats_reference_share"]["mean"] == 0.0


def test_summarise_names_a_missing_reference():
    with pytest.raises(ValueError, match="'lanczos'"):
        summarise({"sr": np.ones(2)}, np.array(["a", "b"]), reference="lanczos")
