"""Per-band percentile rescaling to [0, 1], the band medians that summarise a tile, and the run's stats that hold
the scales (`curation/stats.json`, written by curate-reduce)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from srpipe.errors import StageError
from srpipe.layout import RunLayout


@dataclass(frozen=True)
class BandScale:
    """Per-band low/high percentiles (4,) float32: x -> (x - low) / (high - low), clipped to [0, 1]."""

    low: np.ndarray
    high: np.ndarray

    def apply(self, x: np.ndarray, band_axis: int, clip: bool = True) -> np.ndarray:
        """Rescale `x` whose `band_axis` holds B02, B03, B04, B08; float32 in [0, 1] (beyond it with `clip` False)."""
        shape = [1] * x.ndim
        shape[band_axis] = -1
        low, high = self.low.reshape(shape), self.high.reshape(shape)
        scaled = (x - low) / (high - low)
        return (np.clip(scaled, 0, 1) if clip else scaled).astype(np.float32)

    def invert(self, y: np.ndarray, band_axis: int) -> np.ndarray:
        """Map [0, 1] values back to the original units."""
        shape = [1] * y.ndim
        shape[band_axis] = -1
        return (y * (self.high - self.low).reshape(shape) + self.low.reshape(shape)).astype(np.float32)

    def to_json(self) -> dict:
        """JSON form: {"low": [...], "high": [...]}."""
        return {"low": self.low.tolist(), "high": self.high.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> BandScale:
        """Inverse of `to_json`."""
        return cls(np.asarray(data["low"], np.float32), np.asarray(data["high"], np.float32))


def percentile_scale(pixels: np.ndarray, percentiles: tuple[float, float]) -> BandScale:
    """BandScale from (N, 4) pixel values: the given low/high percentiles per band (a flat band gets a unit range)."""
    low, high = np.percentile(pixels, percentiles, axis=0).astype(np.float32)
    high = np.where(high > low, high, low + 1).astype(np.float32)
    return BandScale(low, high)


def band_medians(values: np.ndarray, mask: np.ndarray) -> list[float]:
    """Per-band medians of (..., 4) `values` over pixels where (...) bool `mask` is True; NaN when none."""
    picked = values[mask]
    return [float(np.median(picked[:, b])) if picked.size else float("nan") for b in range(values.shape[-1])]


def sample_pixels(values: np.ndarray, mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `n` random (., 4) pixels of (..., 4) `values` where `mask` is True, for a percentile reduce."""
    picked = values[mask]
    if len(picked) > n:
        picked = picked[rng.choice(len(picked), n, replace=False)]
    return picked.astype(np.float32)


def region_factors(pixels: np.ndarray) -> np.ndarray:
    """(4,) float32 S2 normalisation factors of a region: per-band medians of its (N, 4) cloud-free pixels."""
    factors = np.median(pixels, axis=0).astype(np.float32)
    return np.where(factors > 0, factors, 1).astype(np.float32)


def fold_factors(scale: BandScale, factors: np.ndarray) -> BandScale:
    """The BandScale on raw values equal to dividing by (4,) `factors` and then applying `scale` (normalised units)."""
    return BandScale((scale.low * factors).astype(np.float32), (scale.high * factors).astype(np.float32))


def load_stats(run_dir: str | Path) -> dict:
    """`curation/stats.json` of a curated run."""
    path = RunLayout(Path(run_dir)).curation_stats
    if not path.exists():
        raise StageError(f"{path} does not exist; run `srpipe curate` first")
    return json.loads(path.read_text())


def scales(stats: dict) -> tuple[BandScale, BandScale]:
    """(S2 scale, label scale) from curation stats, on raw S2 values (the main region's; see `regions` for others)."""
    return BandScale.from_json(stats["lr_scale"]), BandScale.from_json(stats["hr_scale"])
