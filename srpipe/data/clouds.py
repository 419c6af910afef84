"""Cloud masks and cover: the label's by brightness, whiteness and persistence; S2's from the source's mask.

A label pixel is cloud when its blue is above the threshold (the method's test) **and** it is white or blue-high
(blue >= `whiteness` x max(green, red): cloud scatters the visible bands alike, while bright soil, sand and dry grass
rise from blue to red) **and** it is not bright on every label date of the tile (clouds move; bright land, roofs and
lasting snow stay). The last two are what keep a bright arid scene's label frames (docs/training.md measures them).
"""

from __future__ import annotations

import numpy as np


def vhr_cloud_mask(
    vhr: np.ndarray,
    threshold: float,
    whiteness: float = 0.0,
    persistent_is_surface: bool = False,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Return (T, H, W) bool cloud of (T, H, W, 4) label values (B02, B03, B04, B08; label units).

    `whiteness` 0 turns the spectral test off; `persistent_is_surface` needs >= 2 dates valid at a pixel, (T, H, W)
    bool `valid` (default all) says which.
    """
    blue = vhr[..., 0]
    cloud = blue > threshold
    if whiteness > 0:
        cloud &= blue >= whiteness * np.maximum(vhr[..., 1], vhr[..., 2])
    if persistent_is_surface and vhr.shape[0] >= 2:
        valid = np.ones(cloud.shape, bool) if valid is None else valid
        seen = valid.sum(axis=0)
        always = (cloud | ~valid).all(axis=0) & (seen >= 2)
        cloud &= ~always[None]
    return cloud


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
