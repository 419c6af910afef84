"""Calibrated per-pixel intervals: split conformal prediction on |SR - label| scaled by the self-ensemble's spread.

A pixel's nonconformity score is s = |SR - label| / (spread + floor), per band, in label-scaled units (floor: the
band's median spread over the calibration pixels, so that a pixel whose eight views agree still gets a width). The
level-a half-width is q_a (spread + floor), where q_a is the ceil((n + 1) a)-th smallest of the n calibration scores:
labelled pixels the model did not train on (the validation split). A new pixel exchangeable with them then lies
within SR +- half-width with probability >= a (Vovk et al. 2005; Angelopoulos & Bates 2021, section 2.3).
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

LEVELS = tuple(round(0.5 + 0.01 * i, 2) for i in range(50))  # 0.50, 0.51, ..., 0.99: the levels a model carries
MAX_PIXELS = 2_000_000  # calibration pixels kept per band (an even subsample): quantiles to 1e-3 of a level, seconds


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Per band (rows) and level (columns, `levels`), the conformal quantile of s; per band the spread floor
    (label-scaled units); how many pixels and samples of which split and tiles it came from."""

    levels: tuple[float, ...]
    quantiles: tuple[tuple[float, ...], ...]
    floor: tuple[float, ...]
    pixels: int
    samples: int
    split: str
    tiles: tuple[str, ...]

    def quantile(self, level: float) -> np.ndarray:
        """(bands,) q at `level`; ValueError naming the levels this calibration has when it lacks it."""
        for i, have in enumerate(self.levels):
            if math.isclose(have, level, abs_tol=1e-9):
                return np.array([row[i] for row in self.quantiles], np.float32)
        raise ValueError(
            f"interval level {level} is not calibrated; levels: {self.levels[0]}..{self.levels[-1]} by 0.01"
        )

    def half_width(self, spread: np.ndarray, level: float) -> np.ndarray:
        """(..., bands, H, W) spread (label-scaled units) -> the level's half-width, same shape and units."""
        q, floor = self.quantile(level), np.asarray(self.floor, np.float32)
        return q[:, None, None] * (np.asarray(spread, np.float32) + floor[:, None, None])

    def to_json(self) -> dict:
        """A JSON-ready dict (the model file's and the packaged weights' "calibration")."""
        record = {**dataclasses.asdict(self), "method": "split conformal, |SR - label| / (spread + floor), per band"}
        return json.loads(json.dumps(record))  # tuples as lists: equal to what a JSON file gives back

    @classmethod
    def from_json(cls, record: dict) -> Calibration:
        """The inverse of `to_json`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in record.items() if k in fields}
        values["quantiles"] = tuple(tuple(row) for row in values["quantiles"])
        return cls(**{**values, "levels": tuple(values["levels"]), "floor": tuple(values["floor"]),
                      "tiles": tuple(values["tiles"])})  # fmt: skip


def scored_pixels(clear: np.ndarray, border: int) -> np.ndarray:
    """(N, H, W) bool: the clear label pixels of (N, H, W) `clear` inside the `border` crop (those scored)."""
    keep = np.zeros(np.shape(clear), bool)
    keep[:, border : keep.shape[1] - border, border : keep.shape[2] - border] = True
    return keep & np.asarray(clear).astype(bool)


def kept_pixels(
    sr: np.ndarray, label: np.ndarray, clear: np.ndarray, spread: np.ndarray, border: int
) -> tuple[np.ndarray, np.ndarray]:
    """(bands, n) |SR - label| and spread of the clear label pixels inside the `border` crop, from (N, bands, H, W)
    `sr`, `label`, `spread` and (N, H, W) `clear`."""
    keep = scored_pixels(clear, border)
    error = np.abs(np.asarray(sr, np.float32) - np.asarray(label, np.float32))
    spread = np.asarray(spread, np.float32)
    return error.transpose(1, 0, 2, 3)[:, keep], spread.transpose(1, 0, 2, 3)[:, keep]


def fit(
    error: np.ndarray, spread: np.ndarray, samples: int, split: str, tiles: list[str], levels=LEVELS
) -> Calibration:
    """The Calibration of (bands, n) calibration errors and spreads (label-scaled units)."""
    if error.shape[1] < 100:
        raise ValueError(f"calibration needs >= 100 labelled pixels per band; the {split} split has {error.shape[1]}")
    step = max(1, error.shape[1] // MAX_PIXELS)
    error, spread = error[:, ::step].astype(np.float64), spread[:, ::step].astype(np.float64)
    floor = np.maximum(np.median(spread, axis=1), 1e-6)
    scores = error / (spread + floor[:, None])
    n = scores.shape[1]
    ranks = [min(1.0, math.ceil((n + 1) * a) / n) for a in levels]  # the finite-sample conformal rank
    quantiles = np.quantile(scores, ranks, axis=1, method="higher").T
    return Calibration(
        levels=tuple(levels),
        quantiles=tuple(tuple(float(q) for q in row) for row in quantiles),
        floor=tuple(float(f) for f in floor),
        pixels=int(n),
        samples=int(samples),
        split=split,
        tiles=tuple(sorted(set(tiles))),
    )


def coverage(error: np.ndarray, spread: np.ndarray, calibration: Calibration, levels=LEVELS) -> np.ndarray:
    """(bands, levels) share of pixels whose (bands, n) `error` lies within the level's half-width."""
    out = np.empty((error.shape[0], len(levels)))
    for j, level in enumerate(levels):
        width = calibration.half_width(spread[None, :, :, None], level)[0, :, :, 0]
        out[:, j] = (error <= width).mean(axis=1)
    return out
