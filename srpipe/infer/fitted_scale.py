"""Normalisation that fits the input (`infer.normalisation = "data"`): the S2 percentiles of the data being
processed, and the weights' scales moved onto them, as the method normalised each region by its own data."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from srpipe.config import Config
from srpipe.data.grid import tiles_by_id
from srpipe.data.normalise import BandScale, percentile_scale, sample_pixels
from srpipe.errors import StageError
from srpipe.models.trained import TrainedModel
from srpipe.sources import make_source

DATA_TILES = 16  # tiles (a seeded pick of the run's) whose clear S2 pixels set the data's percentiles
PIXELS_PER_TILE = 20_000
_FITTED: dict[str, BandScale] = {}  # once per process and data: every shard of a run computes the same pick


def data_scale(cfg: Config) -> BandScale:
    """Per-band `curate.percentiles` (4,) of the clear S2 pixels of up to DATA_TILES tiles of the run, in S2 units."""
    key = json.dumps([str(cfg.run_path), dataclasses.asdict(cfg.source), list(cfg.curate.percentiles)], default=str)
    if key not in _FITTED:
        _FITTED[key] = _measure(cfg)
    return _FITTED[key]


def _measure(cfg: Config) -> BandScale:
    grid = tiles_by_id(cfg.run_path)
    rng = np.random.default_rng(0)
    ids = sorted(grid)
    picked = sorted(rng.choice(ids, min(DATA_TILES, len(ids)), replace=False).tolist())
    source, pixels = make_source(cfg.source, cfg.run_path), []
    for tile_id in picked:
        stack = source.s2_stack(grid[tile_id])
        clear = stack.valid & ~stack.clouds & np.isfinite(stack.s2).all(-1)
        pixels.append(sample_pixels(stack.s2, clear, PIXELS_PER_TILE, rng))
    pixels = np.concatenate(pixels)
    if not len(pixels):
        raise StageError(
            f"no clear S2 pixel in tiles {', '.join(picked)} to fit infer.normalisation = 'data' to; "
            "set infer.normalisation = 'model' or download clearer dates"
        )
    return percentile_scale(pixels, tuple(cfg.curate.percentiles))


def fitted(model: TrainedModel, data: BandScale) -> TrainedModel:
    """`model` with `data` as its LR scale and its label scale moved by the same per-band affine map (the weights' LR
    low/high onto the data's): the network sees the data spread as it saw its training data and its output comes back
    through that map, in the data's radiometry. The LR-to-label map in scaled units, which the consistency constraint
    uses, is unchanged by construction, so the net is shared as it is."""
    ratio = (data.high - data.low) / (model.lr_scale.high - model.lr_scale.low)

    def move(x: np.ndarray) -> np.ndarray:
        return (data.low + (x - model.lr_scale.low) * ratio).astype(np.float32)

    label = BandScale(move(model.hr_scale.low), move(model.hr_scale.high))
    return dataclasses.replace(model, lr_scale=data, hr_scale=label)
