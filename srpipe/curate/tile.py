"""Curate map, one tile: cloud masks and cover, band statistics, raw samples -> `curation/tiles/<tile>.{json,h5}`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import h5py
import numpy as np

from srpipe import eopatch as ep
from srpipe.config import Config
from srpipe.curate.clouds import clear_frames, cloud_cover, vhr_cloud_mask
from srpipe.curate.normalise import band_medians, sample_pixels
from srpipe.errors import TileError
from srpipe.grid import tile_seed
from srpipe.state import atomic_path, write_json


def tile_paths(run_dir: str | Path, tile_id: str) -> tuple[Path, Path]:
    """(stats JSON, raw samples HDF5) of a curated tile."""
    folder = Path(run_dir) / "curation" / "tiles"
    return folder / f"{tile_id}.json", folder / f"{tile_id}.h5"


def frames_before(dates: list[dt.datetime], usable: np.ndarray, when: dt.datetime, max_days: int, k: int) -> list[int]:
    """Indices of the (up to) `k` most recent usable frames within `max_days` on or before `when`, chronological."""
    picked = [
        i for i, d in enumerate(dates) if usable[i] and dt.timedelta(0) <= when - d <= dt.timedelta(days=max_days)
    ]
    return sorted(picked, key=lambda i: dates[i])[-k:]


def curate_tile(cfg: Config, tile_id: str) -> dict:
    """Run the curation map for one tile; write its stats and raw (unnormalised) samples; return counts."""
    c = cfg.curate
    patch = ep.load_patch(cfg.run_path, tile_id, cfg.source.scale)
    s2, s2_valid = patch[ep.S2_BANDS], patch[ep.S2_VALID][..., 0]
    s2_clouds = patch[ep.S2_CLOUDS][..., 0]
    vhr, vhr_valid = patch[ep.VHR_BANDS], patch[ep.VHR_VALID][..., 0]
    s2_dates, label_dates = list(patch.timestamps), ep.vhr_dates(patch)

    s2_cover = cloud_cover(s2_clouds, s2_valid)
    s2_keep = clear_frames(s2_cover, s2_valid, c.s2_max_cloud_cover)
    vhr_clouds = vhr_cloud_mask(vhr, c.vhr_cloud_threshold)
    vhr_cover = cloud_cover(vhr_clouds, vhr_valid)
    vhr_keep = clear_frames(vhr_cover, vhr_valid, c.vhr_max_cloud_cover)
    if not s2_keep.any():
        raise TileError(
            tile_id,
            f"all {len(s2_dates)} S2 frames are cloudier than curate.s2_max_cloud_cover={c.s2_max_cloud_cover} "
            "or lack data; widen source.time_interval or raise the threshold",
        )
    if not vhr_keep.any():
        raise TileError(
            tile_id,
            f"all {len(label_dates)} label frames are cloudier than curate.vhr_max_cloud_cover={c.vhr_max_cloud_cover} "
            f"(blue > curate.vhr_cloud_threshold={c.vhr_cloud_threshold}); "
            "check the threshold against the label's units",
        )

    rng = np.random.default_rng([cfg.source.seed, tile_seed(tile_id)])
    lr_clear = ~s2_clouds & s2_valid
    hr_clear = ~vhr_clouds & vhr_valid
    lr_pixels = sample_pixels(s2[s2_keep], lr_clear[s2_keep], c.pixels_per_tile, rng)
    hr_pixels = sample_pixels(vhr[vhr_keep], hr_clear[vhr_keep], c.pixels_per_tile, rng)

    k, p, s = c.n_frames, c.lr_patch_px, cfg.source.scale
    h, w = s2.shape[1:3]
    if h < p or w < p:
        raise TileError(tile_id, f"S2 grid {h}x{w} is smaller than curate.lr_patch_px={p}; lower it")
    lr, lr_mask, hr, hr_mask, lr_dates, hr_date = [], [], [], [], [], []
    skipped_dates = {}
    for t in np.flatnonzero(vhr_keep):
        frames = frames_before(s2_dates, s2_keep, label_dates[t], c.max_days_before, k)
        if not frames:
            skipped_dates[label_dates[t].isoformat()] = f"no clear S2 frame within {c.max_days_before} days before"
            continue
        for _ in range(c.patches_per_tile):
            y, x = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
            stack = np.zeros((k, 4, p, p), np.float32)
            stack_mask = np.zeros((k, p, p), bool)
            stack[: len(frames)] = s2[frames, y : y + p, x : x + p].transpose(0, 3, 1, 2)
            stack_mask[: len(frames)] = lr_clear[frames, y : y + p, x : x + p]
            lr.append(stack)
            lr_mask.append(stack_mask)
            hr.append(vhr[t, y * s : (y + p) * s, x * s : (x + p) * s].transpose(2, 0, 1))
            hr_mask.append(hr_clear[t, y * s : (y + p) * s, x * s : (x + p) * s])
            lr_dates.append([s2_dates[i].date().isoformat() for i in frames] + [""] * (k - len(frames)))
            hr_date.append(label_dates[t].date().isoformat())

    json_path, h5_path = tile_paths(cfg.run_path, tile_id)
    with atomic_path(h5_path) as tmp, h5py.File(tmp, "w") as f:
        n = len(lr)
        f.create_dataset("lr", data=np.asarray(lr, np.float32).reshape(n, k, 4, p, p))
        f.create_dataset("lr_mask", data=np.asarray(lr_mask, bool).reshape(n, k, p, p))
        f.create_dataset("hr", data=np.asarray(hr, np.float32).reshape(n, 4, p * s, p * s))
        f.create_dataset("hr_mask", data=np.asarray(hr_mask, bool).reshape(n, p * s, p * s))
        f.create_dataset("lr_dates", data=np.asarray(lr_dates, dtype="S10").reshape(n, k))
        f.create_dataset("hr_date", data=np.asarray(hr_date, dtype="S10"))
        f.create_dataset("lr_pixels", data=lr_pixels)
        f.create_dataset("hr_pixels", data=hr_pixels)
    stats = {
        "tile_id": tile_id,
        "s2": {
            "dates": [d.date().isoformat() for d in s2_dates],
            "cloud_cover": s2_cover.round(4).tolist(),
            "kept": s2_keep.tolist(),
            "medians": band_medians(s2[s2_keep], lr_clear[s2_keep]),
        },
        "vhr": {
            "dates": [d.date().isoformat() for d in label_dates],
            "cloud_cover": vhr_cover.round(4).tolist(),
            "kept": vhr_keep.tolist(),
            "medians_all": band_medians(vhr, vhr_valid),
            "medians_cloud_free": band_medians(vhr[vhr_keep], hr_clear[vhr_keep]),
            "skipped": skipped_dates,
        },
        "n_samples": len(lr),
    }
    write_json(json_path, stats)
    return {"samples": len(lr), "s2_kept": int(s2_keep.sum()), "vhr_kept": int(vhr_keep.sum())}
