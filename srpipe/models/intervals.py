"""The pixels intervals are calibrated and checked on: a trained model's |SR - label| and spread over a split's
labelled samples, with SR as `srpipe infer` makes it (the eight views' mean, floored at label value 0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from srpipe.data.normalise import BandScale
from srpipe.data.shards import count_samples, iter_samples
from srpipe.models.calibration import kept_pixels
from srpipe.models.trained import TrainedModel, ensemble_mean_std

BATCH = 16  # samples per ensemble forward
MAX_SAMPLES = 256  # at most this many samples, every k-th of the split: ~1e6 pixels pin a quantile to 1e-3 of a level
PIXELS_PER_SAMPLE = 4096  # at most this many (evenly strided) of each sample's kept pixels: memory stays bounded


def to_model_units(
    model: TrainedModel, run_scales: tuple[BandScale, BandScale], lr: np.ndarray, hr: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, 4, h, w) LR and (N, 4, H, W) label arrays scaled by a run's curation (`run_scales`: S2, label) -> the
    same in the model's scaled units: the identity on the run the model was trained on; on another run (a scene the
    model never saw, curated with its own percentiles) what makes its errors and spreads the model's."""
    lr_scale, hr_scale = run_scales
    lr = model.lr_scale.apply(lr_scale.invert(np.asarray(lr, np.float32), 2), 2, clip=False)
    return lr.astype(np.float32), model.hr_scale.apply(hr_scale.invert(np.asarray(hr, np.float32), 1), 1, clip=False)


def every_kth(total: int, most: int = MAX_SAMPLES) -> int:
    """The stride k that keeps at most `most` of `total` samples, evenly over the split."""
    return max(1, -(-total // most))


def picked(seen: int, n: int, stride: int) -> np.ndarray:
    """Indices among the next `n` samples (after `seen` of the split) that every `stride`-th keeps."""
    return np.flatnonzero((seen + np.arange(n)) % stride == 0)


def pixel_step(kept: int, samples: int) -> int:
    """The stride over `kept` pixels of `samples` samples that keeps at most PIXELS_PER_SAMPLE per sample."""
    return max(1, kept // (PIXELS_PER_SAMPLE * samples))


def ensemble_sr(
    model: TrainedModel, run_scales: tuple[BandScale, BandScale], lr: np.ndarray, hr: np.ndarray, mask: torch.Tensor
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """A run's curated LR and labels (`to_model_units`) -> (LR tensor, SR as infer makes it (the 8 views' mean,
    floored), the views' std, labels), all in the model's label-scaled units."""
    lr, hr = to_model_units(model, run_scales, lr, hr)
    lr = torch.from_numpy(lr)
    mean, std = ensemble_mean_std(model.forward, lr, mask)
    return lr, model.floor(mean).numpy(), std.numpy(), hr


@torch.no_grad()
def errors_and_spreads(
    model: TrainedModel, paths: list[Path], border: int, run_scales: tuple[BandScale, BandScale]
) -> tuple[np.ndarray, np.ndarray, int, list[str]]:
    """(bands, n) |SR - label| and spread (the eight views' std) of the clear label pixels of every k-th sample in
    `paths` (at most MAX_SAMPLES, curated with `run_scales`), in the model's label-scaled units, with SR as infer makes
    it (the views' mean, floored); and how many samples of which tiles."""
    stride, seen = every_kth(count_samples(paths)), 0
    errors, spreads, tiles = [], [], []
    for shard in iter_samples(tqdm(paths, desc="intervals", unit="shard", mininterval=5)):
        chosen = picked(seen, len(shard["lr"]), stride)
        seen += len(shard["lr"])
        for start in range(0, len(chosen), BATCH):
            part = chosen[start : start + BATCH]
            mask = torch.from_numpy(np.asarray(shard["lr_mask"][part]))
            _, sr, std, hr = ensemble_sr(model, run_scales, shard["lr"][part], shard["hr"][part], mask)
            e, s = kept_pixels(sr, hr, shard["hr_mask"][part], std, border)
            step = pixel_step(e.shape[1], len(part))
            errors.append(e[:, ::step])
            spreads.append(s[:, ::step])
        tiles += [shard["tile_id"][j].decode() for j in chosen]
    return np.concatenate(errors, axis=1), np.concatenate(spreads, axis=1), len(tiles), tiles
