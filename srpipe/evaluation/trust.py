"""The trust numbers: does the self-ensemble's spread (its 8 views' per-pixel std) point at the pixels SR gets wrong?

Over the kept test samples' clear label pixels inside the loss's border crop: Spearman's rank correlation of the spread
with |SR - label| (both band means, curated label units), and the mean |error| per spread decile.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.stats import spearmanr

from srpipe.evaluation.context import Patches

MAX_PIXELS = 2_000_000  # Spearman ranks every pixel: an even subsample keeps it about a second on a full test set
N_BINS = 10  # deciles


@dataclasses.dataclass(frozen=True)
class Trust:
    """Spearman rho of spread vs |error| over `n_pixels` (None when either is constant); the spread's decile edges;
    per decile (pixels ranked by spread, N_BINS equal shares) its mean spread, mean |error| and pixel count; curated
    label units."""

    spearman: float | None
    n_pixels: int
    decile_edges: list[float]
    mean_spread: list[float]
    mean_abs_error: list[float]
    pixels: list[int]

    def as_json(self) -> dict:
        """metrics.json's "trust" entry."""
        return {**dataclasses.asdict(self), "units": "curated label units, mean over the four bands"}


def error_and_spread(
    sr: np.ndarray, label: np.ndarray, clear: np.ndarray, spread: np.ndarray, border: int
) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) |SR - label| (band mean) and spread of (N, 4, H, W) `sr`, `label` and (N, [1,] H, W) `spread`;
    NaN where the (N, H, W) `clear` label mask is False or within `border` px of the edge."""
    error = np.abs(np.asarray(sr, np.float32) - np.asarray(label, np.float32)).mean(axis=1)
    spread = np.asarray(spread, np.float32).reshape(error.shape).copy()
    keep = np.zeros(error.shape, bool)
    keep[:, border : error.shape[1] - border, border : error.shape[2] - border] = True
    keep &= np.asarray(clear).astype(bool)
    error[~keep], spread[~keep] = np.nan, np.nan
    return error, spread


def trust_numbers(error: np.ndarray, spread: np.ndarray, bins: int = N_BINS) -> Trust:
    """`Trust` of per-pixel `error` and `spread` (same shape, any; pixels NaN in either are left out)."""
    keep = np.isfinite(error) & np.isfinite(spread)
    e, s = error[keep].astype(np.float64), spread[keep].astype(np.float64)
    if e.size < 2:
        raise ValueError(f"trust_numbers: {e.size} pixels with both an error and a spread; need at least 2")
    step = max(1, e.size // MAX_PIXELS)
    rho = spearmanr(s[::step], e[::step]).statistic if np.ptp(s) > 0 and np.ptp(e) > 0 else np.nan
    shuffled = np.random.default_rng(0).permutation(s.size)  # ties split at random, not by position in the image
    decile = np.empty(s.size, np.int64)  # by rank, not value: equal shares even where ties (a flat zero spread) are
    decile[shuffled[np.argsort(s[shuffled], kind="stable")]] = np.arange(s.size) * bins // s.size
    counts = np.bincount(decile, minlength=bins)
    return Trust(
        spearman=_number(rho),
        n_pixels=int(e.size),
        decile_edges=np.quantile(s, np.linspace(0, 1, bins + 1)).tolist(),
        mean_spread=(np.bincount(decile, s, bins) / np.maximum(counts, 1)).tolist(),
        mean_abs_error=(np.bincount(decile, e, bins) / np.maximum(counts, 1)).tolist(),
        pixels=counts.tolist(),
    )


def trust_maps(patches: Patches, border: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) error and spread maps (`error_and_spread`) of the kept test images: the ensemble SR "sr" against
    "hr" on "hr_mask", the views' spread "sr_views_std"."""
    images = (patches.array(k) for k in ("sr", "hr", "hr_mask", "sr_views_std"))
    return error_and_spread(*images, border)


def trust_of(patches: Patches, border: int) -> Trust:
    """`Trust` of the kept test images (see `trust_maps`)."""
    return trust_numbers(*trust_maps(patches, border))


def _number(value: float) -> float | None:
    """`value` as a float, None for NaN (JSON has no NaN)."""
    return None if not np.isfinite(value) else float(value)
