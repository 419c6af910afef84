"""Curate map, one tile: clouds, medians, samples, noise scores, histogram matching -> `curation/tiles/<tile>.*`.

The h5 holds raw (unnormalised) samples: lr (N, K, 4, h, w) S2 values, lr_mask (N, K, h, w), hr (N, 4, H, W) the label
matched to S2 (S2 units), hr_unmatched (N, 4, H, W) the label in its own units, hr_mask (N, H, W), scores (N, 5)
(quality.SCORE_NAMES), yx (N, 2) S2-pixel corner, dates; plus pixel samples for the reduce's factors and percentiles.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import h5py
import numpy as np

from srpipe import eopatch as ep
from srpipe.config import Config
from srpipe.curate.clouds import clear_frames, cloud_cover, vhr_cloud_mask
from srpipe.curate.histmatch import match_histograms
from srpipe.curate.normalise import band_medians, percentile_scale, sample_pixels
from srpipe.curate.quality import SCORE_NAMES, bicubic_upsample, pair_scores
from srpipe.errors import TileError
from srpipe.grid import tile_seed
from srpipe.state import atomic_path, write_json

BLUE_SAMPLE_PX = 4000  # label blue values kept per frame, for the threshold histograms


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


def closest_frame(dates: list[dt.datetime], usable: np.ndarray, when: dt.datetime) -> int:
    """Index of the usable frame closest in time to `when` (either side; the earlier on a tie)."""
    picked = np.flatnonzero(usable)
    gaps = [(abs((dates[i] - when).total_seconds()), dates[i] > when) for i in picked]
    return int(picked[min(range(len(picked)), key=gaps.__getitem__)])


def curate_tile(cfg: Config, tile_id: str) -> dict:
    """Run the curation map for one tile; write its stats and raw samples with their scores; return counts."""
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
    label_medians = band_medians(vhr[vhr_keep], hr_clear[vhr_keep])  # the label normalisation factors of this tile
    # scores compare label and S2 in about [0, 1]: each scaled by this tile's own percentiles (the reduce's are unknown)
    lr_tile_scale = percentile_scale(lr_pixels, c.percentiles)
    hr_tile_scale = percentile_scale(hr_pixels, c.percentiles)
    blue = vhr[..., 0].reshape(len(vhr), -1)
    blue = blue[:, rng.choice(blue.shape[1], min(BLUE_SAMPLE_PX, blue.shape[1]), replace=False)]

    k, p, s = c.n_frames, c.lr_patch_px, cfg.source.scale
    h, w = s2.shape[1:3]
    if h < p or w < p:
        raise TileError(tile_id, f"S2 grid {h}x{w} is smaller than curate.lr_patch_px={p}; lower it")
    out: dict[str, list] = {k_: [] for k_ in ("lr", "lr_mask", "hr", "hr_unmatched", "hr_mask", "scores", "yx")}
    out |= {"lr_dates": [], "hr_date": [], "ref_date": [], "hr_pixels": []}
    skipped_dates = {}
    for t in np.flatnonzero(vhr_keep):
        frames = frames_before(s2_dates, s2_keep, label_dates[t], c.max_days_before, k)
        if not frames:
            skipped_dates[label_dates[t].isoformat()] = f"no clear S2 frame within {c.max_days_before} days before"
            continue
        ref = closest_frame(s2_dates, s2_keep, label_dates[t])
        last = frames[-1]
        for _ in range(c.patches_per_tile):
            y, x = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
            stack = np.zeros((k, 4, p, p), np.float32)
            stack_mask = np.zeros((k, p, p), bool)
            stack[: len(frames)] = s2[frames, y : y + p, x : x + p].transpose(0, 3, 1, 2)
            stack_mask[: len(frames)] = lr_clear[frames, y : y + p, x : x + p]
            label = vhr[t, y * s : (y + p) * s, x * s : (x + p) * s].transpose(2, 0, 1)
            label_mask = hr_clear[t, y * s : (y + p) * s, x * s : (x + p) * s]
            bicubic = bicubic_upsample(s2[ref, y : y + p, x : x + p].transpose(2, 0, 1), s)
            scores = pair_scores(
                hr_tile_scale.apply(label, band_axis=0), lr_tile_scale.apply(bicubic, band_axis=0), c.noise_max_shift_px
            )
            if c.histmatch_reference == "bicubic_closest":
                matched = match_histograms(label, bicubic)
            else:  # the published code: the last S2 frame of the stack, at low resolution
                matched = match_histograms(label, s2[last, y : y + p, x : x + p].transpose(2, 0, 1))
            pick = rng.choice(label_mask.size, c.pixels_per_sample)
            out["lr"].append(stack)
            out["lr_mask"].append(stack_mask)
            out["hr"].append(matched)
            out["hr_unmatched"].append(label)
            out["hr_mask"].append(label_mask)
            out["scores"].append(scores.as_array())
            out["yx"].append((y, x))
            out["hr_pixels"].append(matched.reshape(4, -1)[:, pick].T)
            out["lr_dates"].append([s2_dates[i].date().isoformat() for i in frames] + [""] * (k - len(frames)))
            out["hr_date"].append(label_dates[t].date().isoformat())
            out["ref_date"].append(s2_dates[ref].date().isoformat())

    n = len(out["lr"])
    shapes = {
        "lr": ((n, k, 4, p, p), np.float32),
        "lr_mask": ((n, k, p, p), bool),
        "hr": ((n, 4, p * s, p * s), np.float32),
        "hr_unmatched": ((n, 4, p * s, p * s), np.float32),
        "hr_mask": ((n, p * s, p * s), bool),
        "scores": ((n, len(SCORE_NAMES)), np.float32),
        "yx": ((n, 2), np.int32),
        "hr_pixels": ((n, c.pixels_per_sample, 4), np.float32),
        "lr_dates": ((n, k), "S10"),
        "hr_date": ((n,), "S10"),
        "ref_date": ((n,), "S10"),
    }
    json_path, h5_path = tile_paths(cfg.run_path, tile_id)
    with atomic_path(h5_path) as tmp, h5py.File(tmp, "w") as f:
        for key, (shape, dtype) in shapes.items():
            f.create_dataset(key, data=np.asarray(out[key], dtype=dtype).reshape(shape))
        f.create_dataset("lr_pixels", data=lr_pixels)
        f.create_dataset("vhr_blue", data=blue.astype(np.float32))
        f.attrs["score_names"] = ",".join(SCORE_NAMES)
    stats = {
        "tile_id": tile_id,
        "s2": {
            "dates": [d.date().isoformat() for d in s2_dates],
            "cloud_cover": s2_cover.round(4).tolist(),
            "kept": s2_keep.tolist(),
            "medians_all": band_medians(s2, s2_valid),
            "medians": band_medians(s2[s2_keep], lr_clear[s2_keep]),
        },
        "vhr": {
            "dates": [d.date().isoformat() for d in label_dates],
            "cloud_cover": vhr_cover.round(4).tolist(),
            "kept": vhr_keep.tolist(),
            "medians_all": band_medians(vhr, vhr_valid),
            "medians_cloud_free": label_medians,
            "skipped": skipped_dates,
        },
        "label_medians": label_medians,
        "samples": [
            {
                "hr_date": hd,
                "ref_date": rd,
                "y": int(y),
                "x": int(x),
                **dict(zip(SCORE_NAMES, map(float, sc), strict=True)),
            }
            for hd, rd, (y, x), sc in zip(out["hr_date"], out["ref_date"], out["yx"], out["scores"], strict=True)
        ],
        "n_samples": n,
    }
    write_json(json_path, stats)
    return {"samples": n, "s2_kept": int(s2_keep.sum()), "vhr_kept": int(vhr_keep.sum())}
