"""Curate map, one tile: clouds, medians, samples, noise scores, histogram matching -> `curation/tiles/<tile>.*`.

The raw samples file `<tile>.h5` follows `shards.TILE_FIELDS`; `<tile>.json` holds the frames' cloud cover and medians,
the label medians and each sample's scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from srpipe import eopatch as ep
from srpipe.config import Config, CurateConfig
from srpipe.curate.histmatch import match_histograms
from srpipe.curate.quality import SCORE_NAMES, bicubic_upsample, pair_scores
from srpipe.data.frames import Frames, choose_frames, closest_frame, frames_before
from srpipe.data.grid import tile_seed
from srpipe.data.normalise import BandScale, band_medians, percentile_scale, sample_pixels
from srpipe.data.shards import TILE_FIELDS
from srpipe.errors import TileError
from srpipe.state import atomic_path, write_json

BLUE_SAMPLE_PX = 4000  # label blue values kept per frame, for the threshold histograms


@dataclass(frozen=True)
class _TileScales:
    """This tile's own scales for the noise scores (the reduce's are unknown here) and its pixel samples."""

    lr_pixels: np.ndarray  # (M, 4) float32 clear S2 pixels of the kept frames
    lr: BandScale  # S2 percentiles
    hr: BandScale  # label percentiles
    label_medians: list[float]  # the label normalisation factors of this tile


def curate_tile(cfg: Config, tile_id: str) -> dict:
    """Run the curation map for one tile; write its stats and raw samples with their scores; return counts."""
    patch = ep.load_patch(cfg.run_path, tile_id, cfg.source.scale)
    frames = choose_frames(cfg.curate, tile_id, patch)
    rng = np.random.default_rng([cfg.source.seed, tile_seed(tile_id)])  # every draw below comes from it, in order
    tile_scales = _tile_scales(cfg.curate, frames, rng)
    vhr_blue = _blue_sample(frames.vhr, rng)
    samples, skipped = _draw_samples(cfg, tile_id, frames, tile_scales, rng)
    stats_path, samples_path = cfg.layout.curated_tile(tile_id)
    _write_samples(cfg, samples_path, samples, tile_scales.lr_pixels, vhr_blue)
    write_json(stats_path, _tile_stats(tile_id, frames, tile_scales, samples, skipped))
    return {"samples": len(samples), "s2_kept": int(frames.s2_kept.sum()), "vhr_kept": int(frames.vhr_kept.sum())}


def _tile_scales(curate: CurateConfig, frames: Frames, rng: np.random.Generator) -> _TileScales:
    """Percentiles of random clear pixels of the kept S2 and label frames (scores compare the two in about [0, 1])."""
    s2_kept, vhr_kept = frames.s2_kept, frames.vhr_kept
    lr_pixels = sample_pixels(frames.s2[s2_kept], frames.s2_clear[s2_kept], curate.pixels_per_tile, rng)
    hr_pixels = sample_pixels(frames.vhr[vhr_kept], frames.vhr_clear[vhr_kept], curate.pixels_per_tile, rng)
    return _TileScales(
        lr_pixels=lr_pixels,
        lr=percentile_scale(lr_pixels, curate.percentiles),
        hr=percentile_scale(hr_pixels, curate.percentiles),
        label_medians=band_medians(frames.vhr[vhr_kept], frames.vhr_clear[vhr_kept]),
    )


def _blue_sample(vhr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(L, B) float32: up to BLUE_SAMPLE_PX random blue values of each (L, H, W, 4) label frame, the same pixels."""
    blue = vhr[..., 0].reshape(len(vhr), -1)
    return blue[:, rng.choice(blue.shape[1], min(BLUE_SAMPLE_PX, blue.shape[1]), replace=False)].astype(np.float32)


def _draw_samples(
    cfg: Config, tile_id: str, frames: Frames, tile_scales: _TileScales, rng: np.random.Generator
) -> tuple[list[dict], dict[str, str]]:
    """`patches_per_tile` random patches per kept label frame (as dicts of TILE_FIELDS); {label date: why skipped}."""
    curate, patch_px = cfg.curate, cfg.curate.lr_patch_px
    height, width = frames.s2.shape[1:3]
    if height < patch_px or width < patch_px:
        raise TileError(tile_id, f"S2 grid {height}x{width} is smaller than curate.lr_patch_px={patch_px}; lower it")
    samples, skipped = [], {}
    for label_index in np.flatnonzero(frames.vhr_kept):
        label_date = frames.vhr_dates[label_index]
        stack = frames_before(frames.s2_dates, frames.s2_kept, label_date, curate.max_days_before, curate.n_frames)
        if not stack:
            skipped[label_date.isoformat()] = f"no clear S2 frame within {curate.max_days_before} days before"
            continue
        reference = closest_frame(frames.s2_dates, frames.s2_kept, label_date)
        for _ in range(curate.patches_per_tile):
            corner = int(rng.integers(0, height - patch_px + 1)), int(rng.integers(0, width - patch_px + 1))
            samples.append(_sample(cfg, frames, tile_scales, label_index, stack, reference, corner, rng))
    return samples, skipped


def _sample(
    cfg: Config,
    frames: Frames,
    tile_scales: _TileScales,
    label_index: int,
    stack: list[int],
    reference: int,
    corner: tuple[int, int],
    rng: np.random.Generator,
) -> dict:
    """One sample at S2-pixel `corner`: the `stack` frames, the label, its scores against the `reference` frame."""
    curate, scale, patch_px = cfg.curate, cfg.source.scale, cfg.curate.lr_patch_px
    y, x = corner
    rows, cols = slice(y, y + patch_px), slice(x, x + patch_px)
    hr_rows, hr_cols = slice(y * scale, (y + patch_px) * scale), slice(x * scale, (x + patch_px) * scale)
    lr = np.zeros((curate.n_frames, 4, patch_px, patch_px), np.float32)
    lr_mask = np.zeros((curate.n_frames, patch_px, patch_px), bool)
    lr[: len(stack)] = frames.s2[stack, rows, cols].transpose(0, 3, 1, 2)
    lr_mask[: len(stack)] = frames.s2_clear[stack, rows, cols]
    label = frames.vhr[label_index, hr_rows, hr_cols].transpose(2, 0, 1)
    label_mask = frames.vhr_clear[label_index, hr_rows, hr_cols]
    bicubic = bicubic_upsample(frames.s2[reference, rows, cols].transpose(2, 0, 1), scale)
    scores = pair_scores(
        tile_scales.hr.apply(label, band_axis=0), tile_scales.lr.apply(bicubic, band_axis=0), curate.noise_max_shift_px
    )
    if curate.histmatch_reference == "bicubic_closest":
        matched = match_histograms(label, bicubic)
    else:  # the published code: the last S2 frame of the stack, at low resolution
        matched = match_histograms(label, frames.s2[stack[-1], rows, cols].transpose(2, 0, 1))
    pick = rng.choice(label_mask.size, curate.pixels_per_sample)
    lr_dates = [frames.s2_dates[i].date().isoformat() for i in stack]
    return {
        "lr": lr,
        "lr_mask": lr_mask,
        "hr": matched,
        "hr_unmatched": label,
        "hr_mask": label_mask,
        "scores": scores.as_array(),
        "yx": (y, x),
        "hr_pixels": matched.reshape(4, -1)[:, pick].T,
        "lr_dates": lr_dates + [""] * (curate.n_frames - len(stack)),
        "hr_date": frames.vhr_dates[label_index].date().isoformat(),
        "ref_date": frames.s2_dates[reference].date().isoformat(),
    }


def _write_samples(cfg: Config, path: Path, samples: list[dict], lr_pixels: np.ndarray, vhr_blue: np.ndarray) -> None:
    """Write the tile's raw samples file (`data.shards.TILE_FIELDS`), atomically."""
    patch_px, label_px = cfg.curate.lr_patch_px, cfg.curate.lr_patch_px * cfg.source.scale
    sizes = {"N": len(samples), "K": cfg.curate.n_frames, "h": patch_px, "w": patch_px, "H": label_px, "W": label_px}
    sizes |= {"P": cfg.curate.pixels_per_sample, "S": len(SCORE_NAMES), "M": len(lr_pixels)}
    sizes |= dict(zip("LB", vhr_blue.shape, strict=True))
    per_tile = {"lr_pixels": lr_pixels, "vhr_blue": vhr_blue}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, field in TILE_FIELDS.items():
            values = per_tile[key] if key in per_tile else [sample[key] for sample in samples]
            data = np.asarray(values, dtype=field.dtype).reshape(field.shape(sizes))
            # fletcher32 (chunked; an empty array has no chunk): a flipped bit fails the reduce's read, naming the file
            f.create_dataset(key, data=data, fletcher32=data.size > 0)
        f.attrs["score_names"] = ",".join(SCORE_NAMES)


def _tile_stats(
    tile_id: str, frames: Frames, tile_scales: _TileScales, samples: list[dict], skipped: dict[str, str]
) -> dict:
    """The tile's stats JSON: cloud cover, kept frames and medians per frame kind; label medians; sample scores."""
    return {
        "tile_id": tile_id,
        "s2": {
            "dates": [d.date().isoformat() for d in frames.s2_dates],
            "cloud_cover": frames.s2_cover.round(4).tolist(),
            "kept": frames.s2_kept.tolist(),
            "medians_all": band_medians(frames.s2, frames.s2_valid),
            "medians": band_medians(frames.s2[frames.s2_kept], frames.s2_clear[frames.s2_kept]),
        },
        "vhr": {
            "dates": [d.date().isoformat() for d in frames.vhr_dates],
            "cloud_cover": frames.vhr_cover.round(4).tolist(),
            "kept": frames.vhr_kept.tolist(),
            "medians_all": band_medians(frames.vhr, frames.vhr_valid),
            "medians_cloud_free": tile_scales.label_medians,
            "skipped": skipped,
        },
        "label_medians": tile_scales.label_medians,
        "samples": [
            {
                "hr_date": sample["hr_date"],
                "ref_date": sample["ref_date"],
                "y": int(sample["yx"][0]),
                "x": int(sample["yx"][1]),
                **dict(zip(SCORE_NAMES, map(float, sample["scores"]), strict=True)),
            }
            for sample in samples
        ],
        "n_samples": len(samples),
    }
