"""Cloud masks and cover: the label's by a blue threshold, S2's from the source's mask."""

from __future__ import annotations

import numpy as np


def vhr_cloud_mask(vhr: np.ndarray, threshold: float) -> np.ndarray:
    """Return (T, H, W) bool: True where the label's blue band (B02, index 0) is above `threshold` (label units)."""
    return vhr[..., 0] > threshold


def cloud_cover(clouds: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Return (T,) float: share of valid pixels that are cloudy per frame; 1.0 for a frame with no valid pixel."""
    clouds = clouds.reshape(clouds.shape[0], -1)
    valid = np.ones_like(clouds) if valid is None else valid.reshape(valid.shape[0], -1)
    n_valid = valid.sum(axis=1)
    cover = (clouds & valid).sum(axis=1) / np.maximum(n_valid, 1)
    return np.where(n_valid > 0, cover, 1.0)


def clear_frames(cover: np.ndarray, valid: np.ndarray, max_cover: float) -> np.ndarray:
    """Return (T,) bool: frames with cloud cover at most `max_cover` and a full data mask (T, ...) bool."""
    full = valid.reshape(valid.shape[0], -1).all(axis=1)
    return (cover <= max_cover) & full
