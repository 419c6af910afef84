"""A tile's S2 and label frames with cloud masks and covers, and which to keep: what curation and evaluation pick.

Arrays as in the EOPatch contract (`srpipe/eopatch.py`): S2 (T, h, w, 4), label (L, H, W, 4) float32, masks bool.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from eolearn.core import EOPatch

from srpipe import eopatch as ep
from srpipe.config import CurateConfig
from srpipe.data.clouds import clear_frames, cloud_cover, vhr_cloud_mask
from srpipe.errors import TileError


@dataclass(frozen=True)
class Frames:
    """A tile's S2 (T, h, w, 4) and label (L, H, W, 4) values with their (T|L, ...) bool masks and kept frames."""

    s2: np.ndarray
    s2_valid: np.ndarray
    s2_clear: np.ndarray  # valid and cloud-free
    s2_dates: list[dt.datetime]
    s2_cover: np.ndarray  # (T,) cloud share
    s2_kept: np.ndarray  # (T,) bool: clear enough and complete
    vhr: np.ndarray
    vhr_valid: np.ndarray
    vhr_clear: np.ndarray
    vhr_dates: list[dt.datetime]
    vhr_cover: np.ndarray
    vhr_kept: np.ndarray


def frames_before(dates: list[dt.datetime], usable: np.ndarray, when: dt.datetime, max_days: int, k: int) -> list[int]:
    """Indices of the (up to) `k` most recent usable frames within `max_days` on or before `when`, chronological."""
    picked = [
        i for i, d in enumerate(dates) if usable[i] and dt.timedelta(0) <= when - d <= dt.timedelta(days=max_days)
    ]
    return sorted(picked, key=lambda i: dates[i])[-k:]


def closest_frame(dates: list[dt.datetime], usable: np.ndarray, when: dt.datetime) -> int:
    """Index of the usable frame closest in time to `when` (either side; the earlier on a tie)."""
    picked = np.flatnonzero(usable)
    gaps = [(abs((dates[i] - when).total_seconds()), dates[i] > when) for i in picked]
    return int(picked[min(range(len(picked)), key=gaps.__getitem__)])


def choose_frames(curate: CurateConfig, tile_id: str, patch: EOPatch) -> Frames:
    """The tile's frames with cloud masks and covers; the clear ones kept; TileError when no S2 or label frame is."""
    s2, s2_valid = patch[ep.S2_BANDS], patch[ep.S2_VALID][..., 0]
    s2_clouds = patch[ep.S2_CLOUDS][..., 0]
    vhr, vhr_valid = patch[ep.VHR_BANDS], patch[ep.VHR_VALID][..., 0]
    vhr_clouds = vhr_cloud_mask(
        vhr, curate.vhr_cloud_threshold, curate.vhr_cloud_whiteness, curate.vhr_cloud_persistent_is_surface, vhr_valid
    )
    s2_cover, vhr_cover = cloud_cover(s2_clouds, s2_valid), cloud_cover(vhr_clouds, vhr_valid)
    frames = Frames(
        s2=s2,
        s2_valid=s2_valid,
        s2_clear=~s2_clouds & s2_valid,
        s2_dates=list(patch.timestamps),
        s2_cover=s2_cover,
        s2_kept=clear_frames(s2_cover, s2_valid, curate.s2_max_cloud_cover),
        vhr=vhr,
        vhr_valid=vhr_valid,
        vhr_clear=~vhr_clouds & vhr_valid,
        vhr_dates=ep.vhr_dates(patch),
        vhr_cover=vhr_cover,
        vhr_kept=clear_frames(vhr_cover, vhr_valid, curate.vhr_max_cloud_cover),
    )
    if not frames.s2_kept.any():
        raise TileError(
            tile_id,
            f"all {len(frames.s2_dates)} S2 frames are cloudier than "
            f"curate.s2_max_cloud_cover={curate.s2_max_cloud_cover} or lack data; "
            "widen source.time_interval or raise the threshold",
        )
    if not frames.vhr_kept.any():
        raise TileError(
            tile_id,
            f"all {len(frames.vhr_dates)} label frames are cloudier than "
            f"curate.vhr_max_cloud_cover={curate.vhr_max_cloud_cover} "
            f"(blue > curate.vhr_cloud_threshold={curate.vhr_cloud_threshold}, "
            f"whiteness {curate.vhr_cloud_whiteness}); "
            "check the threshold against the label's units",
        )
    return frames
