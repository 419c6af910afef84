"""Scores where users look: SR of whole test tiles (as `srpipe infer` makes them) against the label, on tile cores.

Each test tile and clear label date gives one image: the stack of frames before the label date (as curation picks it)
super-resolved over the whole buffered tile, the baselines likewise, and the label histogram-matched to the bicubic S2
frame closest in time (as curation does), all in label units. Only the core (what mosaics keep) is scored, cut into
blocks of one training label patch so that win shares count many samples. Labels that curation would not trust are
left out as it leaves them out: dates its shadow filter flagged for the tile, and blocks its noise filter rejects
(label against the bicubic closest S2 frame, scored as in curation but on the model's scales, not the tile's own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from srpipe import eopatch as ep
from srpipe.config import Config
from srpipe.curate.histmatch import match_histograms
from srpipe.curate.quality import bicubic_upsample, pair_scores, passes_noise_filter
from srpipe.data.frames import Frames, choose_frames, closest_frame, frames_before
from srpipe.data.grid import Tile
from srpipe.models.trained import TrainedModel


@dataclass(frozen=True)
class TileImage:
    """One test tile at one label date: (1, K, 4, h, w) LR-scaled stack, its masks and dates, the label-unit label."""

    tile_id: str
    hr_date: str
    lr: torch.Tensor
    lr_mask: torch.Tensor
    lr_dates: list[str]
    hr: torch.Tensor  # (1, 4, H, W) label units
    hr_mask: torch.Tensor  # (1, H, W)
    core: tuple[slice, slice]  # label-pixel rows, columns of the tile's core
    raw_label: np.ndarray  # (4, H, W) the unmatched label and (4, H, W) the bicubic closest S2 frame, for the noise
    raw_reference: np.ndarray  # filter, each on the model's scale


def _core_slices(tile: Tile, shape: tuple[int, int]) -> tuple[slice, slice]:
    """Label-pixel (rows, columns) of `tile`'s core in its buffered box of `shape` (H, W) px."""
    minx, miny, maxx, maxy = tile.bounds
    px, py = (maxx - minx) / shape[1], (maxy - miny) / shape[0]
    cols = slice(round((tile.core[0] - minx) / px), round((tile.core[2] - minx) / px))
    rows = slice(round((maxy - tile.core[3]) / py), round((maxy - tile.core[1]) / py))
    return rows, cols


def _image(cfg: Config, model: TrainedModel, frames: Frames, label: int, tile: Tile) -> TileImage | None:
    """The TileImage of label frame `label`, or None without a clear S2 frame within curate.max_days_before."""
    when = frames.vhr_dates[label]
    stack = frames_before(frames.s2_dates, frames.s2_kept, when, cfg.curate.max_days_before, model.n_frames)
    if not stack:
        return None
    reference = closest_frame(frames.s2_dates, frames.s2_kept, when)
    k, (h, w) = model.n_frames, frames.s2.shape[1:3]
    lr = np.zeros((1, k, 4, h, w), np.float32)
    mask = np.zeros((1, k, h, w), bool)
    lr[0, : len(stack)] = model.lr_scale.apply(frames.s2[stack], band_axis=3).transpose(0, 3, 1, 2)
    mask[0, : len(stack)] = frames.s2_clear[stack]
    raw_label = frames.vhr[label].transpose(2, 0, 1)
    reference_up = bicubic_upsample(frames.s2[reference].transpose(2, 0, 1), model.scale)
    matched = match_histograms(raw_label, reference_up)
    hr = model.hr_scale.apply(matched, band_axis=0)
    dates = [frames.s2_dates[i].date().isoformat() for i in stack] + [""] * (k - len(stack))
    return TileImage(
        tile_id=tile.tile_id,
        hr_date=when.date().isoformat(),
        lr=torch.from_numpy(lr),
        lr_mask=torch.from_numpy(mask),
        lr_dates=dates,
        hr=torch.from_numpy(np.ascontiguousarray(hr, np.float32))[None],
        hr_mask=torch.from_numpy(frames.vhr_clear[label])[None],
        core=_core_slices(tile, raw_label.shape[1:]),
        raw_label=model.hr_scale.apply(raw_label, band_axis=0),
        raw_reference=model.lr_scale.apply(reference_up, band_axis=0),
    )


def tile_images(
    cfg: Config, model: TrainedModel, tiles: list[Tile], shadowed: set[tuple[str, str]] = frozenset()
) -> Iterator[TileImage]:
    """Every clear label date of every tile in `tiles` but the `shadowed` (tile, ISO date) pairs, as a TileImage
    (dates without a usable stack are skipped)."""
    for tile in tiles:
        patch = ep.load_patch(cfg.run_path, tile.tile_id, cfg.source.scale)
        frames = choose_frames(cfg.curate, tile.tile_id, patch)
        for label in np.flatnonzero(frames.vhr_kept):
            if (tile.tile_id, frames.vhr_dates[label].date().isoformat()) in shadowed:
                continue
            image = _image(cfg, model, frames, int(label), tile)
            if image is not None:
                yield image


def shadowed_dates(flags: dict[str, list[str]]) -> set[tuple[str, str]]:
    """(tile, ISO date) pairs the curation's shadow filter flagged (its stats' "shadow_flags": cloudy@date -> tiles)."""
    return {(tile, key.split("@")[1]) for key, tiles in flags.items() for tile in tiles}


def trusted_blocks(image: TileImage, corners: list[tuple[int, int]], block: int, cfg: Config) -> np.ndarray:
    """(N,) bool: the core blocks at `corners` whose label passes the curation's noise filter."""
    c = cfg.curate
    windows = [(slice(None), slice(y, y + block), slice(x, x + block)) for y, x in corners]
    scores = [pair_scores(image.raw_label[w], image.raw_reference[w], c.noise_max_shift_px).as_array() for w in windows]
    scores = np.stack(scores) if scores else np.zeros((0, 5), np.float32)
    return passes_noise_filter(scores, c.noise_min_ssim, c.noise_min_psnr_db, c.noise_max_mse_ratio)


def core_blocks(
    image: torch.Tensor, core: tuple[slice, slice], block: int, border: int
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(N, C, block + 2 border, block + 2 border) windows of (1, C, H, W) `image` whose inner `block` px tile the core
    (the remainder of the core is left out), with the (row, column) of each block's corner in the image."""
    rows, cols = core
    corners = [
        (y, x)
        for y in range(rows.start, rows.stop - block + 1, block)
        for x in range(cols.start, cols.stop - block + 1, block)
    ]
    size = block + 2 * border
    windows = [image[0, ..., y - border : y - border + size, x - border : x - border + size] for y, x in corners]
    return torch.stack(windows), corners


def score_tile(
    image: TileImage,
    methods: dict[str, torch.Tensor],
    keep: np.ndarray,
    block: int,
    border: int,
    score: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, np.ndarray]],
) -> list[dict]:
    """One score row per kept core block of `image`: {"tile_id", "hr_date", "y", "x", "<method>_<metric>": value}."""
    hr, corners = core_blocks(image.hr, image.core, block, border)
    hr_mask, _ = core_blocks(image.hr_mask[:, None].float(), image.core, block, border)
    keep_t = torch.from_numpy(keep)
    hr, hr_mask = hr[keep_t], hr_mask[keep_t][:, 0] > 0.5
    rows = [
        {"tile_id": image.tile_id, "hr_date": image.hr_date, "y": y, "x": x}
        for (y, x), k in zip(corners, keep, strict=True)
        if k
    ]
    if not rows:
        return []
    for name, output in methods.items():
        blocks, _ = core_blocks(output, image.core, block, border)
        for metric, values in score(blocks[keep_t], hr, hr_mask).items():
            for row, value in zip(rows, values, strict=True):
                row[f"{name}_{metric}"] = float(value)
    return rows
