"""Calibrate a trained model's intervals on labelled samples it did not train on (the validation split), and keep the
calibration in its model file, where `srpipe infer` (`infer.interval`) and the packaged weights read it."""

from __future__ import annotations

from pathlib import Path

import torch

from srpipe import state
from srpipe.config import Config
from srpipe.data.normalise import load_stats, scales
from srpipe.data.shards import shard_paths
from srpipe.models.calibration import Calibration, fit
from srpipe.models.intervals import errors_and_spreads
from srpipe.models.trained import TrainedModel, load_trained


def calibrate(cfg: Config, model: TrainedModel, split: str = "val") -> Calibration:
    """The model's Calibration on the run's `split` samples (inside the scored border crop)."""
    paths = shard_paths(cfg.layout.datasets, split)
    if not paths:
        raise ValueError(
            f"no {split} shards in {cfg.layout.datasets} to calibrate on; run `srpipe curate` (>= 3 tiles)"
        )
    run_scales = scales(load_stats(cfg.run_path))
    error, spread, samples, tiles = errors_and_spreads(model, paths, cfg.loss.scored_border_px, run_scales)
    return fit(error, spread, samples, split, tiles)


def calibrate_saved(cfg: Config, model_file: Path) -> Calibration | None:
    """Calibrate the model just saved in `model_file` on the run's validation split and add the calibration to the
    file (None, said, when the run has no validation samples: `infer.interval` then refuses this model)."""
    if not shard_paths(cfg.layout.datasets, "val"):
        print(f"train: no validation samples in {cfg.layout.datasets}: {model_file} gets no interval calibration")
        return None
    calibration = calibrate(cfg, load_trained(cfg))
    store_calibration(model_file, calibration)
    q90 = ", ".join(f"{q:.2f}" for q in calibration.quantile(0.9))
    print(f"train: intervals calibrated on {calibration.pixels} validation pixels (q90 per band: {q90})")
    return calibration


def store_calibration(model_file: Path, calibration: Calibration) -> None:
    """Add `calibration` to the model file's payload (atomically; the weights are left as they are)."""
    payload = torch.load(model_file, weights_only=False, map_location="cpu")
    payload["calibration"] = calibration.to_json()
    with state.atomic_path(model_file) as tmp:
        state.save_torch(payload, tmp)
