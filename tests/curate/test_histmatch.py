"""Histogram matching makes each band's CDF equal to the reference's, and keeps the label's spatial order."""

import numpy as np

from srpipe.curate.histmatch import match_histograms


def test_matching_makes_the_cdfs_equal_per_band_and_keeps_the_ranks():
    rng = np.random.default_rng(0)
    label = rng.gamma(2.0, 1.0, (4, 32, 32)).astype(np.float32) * 100  # another unit, another shape
    reference = rng.normal(0.2, 0.05, (4, 32, 32)).astype(np.float32) + np.arange(4)[:, None, None] * 0.1
    matched = match_histograms(label, reference)
    assert matched.shape == label.shape and matched.dtype == np.float32
    for b in range(4):
        np.testing.assert_allclose(np.sort(matched[b].ravel()), np.sort(reference[b].ravel()), atol=1e-6)
        order = np.argsort(label[b].ravel())
        assert (np.diff(matched[b].ravel()[order]) >= -1e-7).all()  # monotonic: the label's detail survives


def test_matching_to_a_smaller_reference_matches_its_quantiles():
    rng = np.random.default_rng(1)
    label = rng.uniform(0, 1, (4, 64, 64)).astype(np.float32)
    reference = rng.uniform(0.1, 0.3, (4, 16, 16)).astype(np.float32)  # the low-resolution frame, as published
    matched = match_histograms(label, reference)
    for b in range(4):
        q = np.linspace(0.05, 0.95, 7)
        np.testing.assert_allclose(np.quantile(matched[b], q), np.quantile(reference[b], q), atol=0.01)
