"""Statistics over per-sample scores: tile-clustered bootstrap CIs, win shares, the PROBA-V Kelvins score, a summary.

Samples of one tile share its scene, dates and clouds, so they are not independent: every interval here resamples whole
tiles (groups) with replacement, the cluster bootstrap (Field & Welsh 2007, "Bootstrapping clustered data", J. R.
Stat. Soc. B 69, 369-390). Intervals are percentile intervals of the bootstrapped means.
"""

from __future__ import annotations

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


def _group_sums(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-group sum of `values` (G,) and sample count (G,), groups in sorted order."""
    values, groups = np.asarray(values, np.float64), np.asarray(groups)
    if values.ndim != 1 or values.shape != groups.shape:
        raise ValueError(f"values {values.shape} and groups {groups.shape} must both be (N,)")
    if values.size == 0:
        raise ValueError("no samples to bootstrap")
    if not np.isfinite(values).all():
        raise ValueError(f"{int((~np.isfinite(values)).sum())} values are NaN or infinite; drop those samples first")
    _, index = np.unique(groups, return_inverse=True)
    return np.bincount(index, weights=values), np.bincount(index).astype(np.float64)


def bootstrap_means(values: np.ndarray, groups: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """(n_boot,) means of (N,) `values` over whole groups ((N,) ids, e.g. tile ids) drawn with replacement."""
    sums, counts = _group_sums(values, groups)
    g = sums.size
    # scipy.stats.bootstrap resamples observations, not clusters: draw how often each group is picked instead
    picks = np.random.default_rng(seed).multinomial(g, np.full(g, 1.0 / g), size=n_boot).astype(np.float64)
    return (picks @ sums) / (picks @ counts)


def bootstrap_ci(
    values: np.ndarray, groups: np.ndarray, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> tuple[float, float]:
    """(low, high) percentile CI of the mean of (N,) `values`, resampling whole groups; one group gives (mean, mean)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), not {level}")
    means = bootstrap_means(values, groups, n_boot, seed)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def win_share(sr: np.ndarray, baseline: np.ndarray) -> float:
    """Share in [0, 1] of samples where (N,) `sr` > (N,) `baseline` (ties lose); higher-is-better scores."""
    sr, baseline = np.asarray(sr), np.asarray(baseline)
    if sr.shape != baseline.shape or sr.ndim != 1:
        raise ValueError(f"sr {sr.shape} and baseline {baseline.shape} must both be (N,)")
    return float(np.mean(sr > baseline))


def win_share_ci(
    sr: np.ndarray, baseline: np.ndarray, groups: np.ndarray, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> tuple[float, float]:
    """(low, high) cluster-bootstrap CI of `win_share(sr, baseline)`, resampling whole groups."""
    win_share(sr, baseline)  # checks the shapes
    return bootstrap_ci((np.asarray(sr) > np.asarray(baseline)).astype(np.float64), groups, n_boot, seed, level)


def kelvins_score(baseline_cpsnr: np.ndarray, sr_cpsnr: np.ndarray) -> float:
    """PROBA-V Kelvins score: mean over samples of baseline cPSNR / SR cPSNR, both (N,) dB; < 1 means SR wins.

    The score of ESA's PROBA-V super-resolution challenge (Kelvins, 2018-2019,
    https://kelvins.esa.int/proba-v-super-resolution/), defined in Märtens, Izzo, Krzic & Cox (2019),
    "Super-resolution of PROBA-V images using convolutional neural networks", Astrodynamics 3, 387-402; there the
    baseline is the bicubic-upsampled mean of the clearest frames. Lower is better.
    """
    baseline_cpsnr, sr_cpsnr = np.asarray(baseline_cpsnr, np.float64), np.asarray(sr_cpsnr, np.float64)
    if baseline_cpsnr.shape != sr_cpsnr.shape or sr_cpsnr.ndim != 1 or sr_cpsnr.size == 0:
        raise ValueError(f"baseline {baseline_cpsnr.shape} and SR {sr_cpsnr.shape} cPSNR must both be (N,), N > 0")
    if (sr_cpsnr <= 0).any():
        raise ValueError("SR cPSNR must be > 0 dB for the Kelvins ratio")
    return float(np.mean(baseline_cpsnr / sr_cpsnr))


def _interval(values: np.ndarray, groups: np.ndarray, n_boot: int, seed: int, level: float) -> dict:
    """{"mean": float, "ci": [low, high]} of (N,) `values` (plain floats, JSON-ready)."""
    return {"mean": float(np.mean(values)), "ci": list(bootstrap_ci(values, groups, n_boot, seed, level))}


def summarise(
    values_by_method: dict[str, np.ndarray],
    groups: np.ndarray,
    reference: str,
    higher_is_better: bool = True,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> dict:
    """JSON-ready summary of one per-sample score ((N,) per method, samples aligned) against method `reference`.

    Returns {"reference", "level", "n_boot", "n_samples", "n_groups", "methods": {name: {"mean", "ci": [low, high],
    and for every name but the reference "diff": {"mean", "ci"} of method - reference (paired, per sample), and
    "beats_reference_share": {"mean", "ci"} (share of samples where the method is better, as `higher_is_better`
    says)}}}, all plain floats and lists. Every interval uses the same seed, so the resampled groups are the same.
    """
    if reference not in values_by_method:
        raise ValueError(f"reference {reference!r} is not among the methods {sorted(values_by_method)}")
    groups = np.asarray(groups)
    ref = np.asarray(values_by_method[reference], np.float64)
    methods = {}
    for name, raw in values_by_method.items():
        values = np.asarray(raw, np.float64)
        if values.shape != ref.shape:
            raise ValueError(f"method {name!r} has {values.shape} values but {reference!r} has {ref.shape}")
        entry = _interval(values, groups, n_boot, seed, level)
        if name != reference:
            entry["diff"] = _interval(values - ref, groups, n_boot, seed, level)
            better = values > ref if higher_is_better else values < ref
            entry["beats_reference_share"] = _interval(better.astype(np.float64), groups, n_boot, seed, level)
        methods[name] = entry
    return {
        "reference": reference,
        "level": level,
        "n_boot": n_boot,
        "n_samples": int(ref.size),
        "n_groups": int(np.unique(groups).size),
        "methods": methods,
    }
