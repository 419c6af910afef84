"""Calibrate a trained model's intervals on labelled samples it did not train on (the validation split), and keep the
calibration in its model file, where `srpipe infer` (`infer.interval`) and the packaged weights read it."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from srpipe import state
from srpipe.config import Config, load_config
from srpipe.data.normalise import load_stats, scales
from srpipe.data.shards import shard_paths
from srpipe.models.calibration import Calibration, coverage, fit
from srpipe.models.intervals import errors_and_spreads
from srpipe.models.trained import TrainedModel, load_for_inference, load_trained
from srpipe.weights import weights_path


def _split_pixels(cfg: Config, model: TrainedModel, split: str) -> tuple[np.ndarray, np.ndarray, int, list[str]]:
    """`errors_and_spreads` of the run's `split` samples (inside the scored border crop), in the model's units."""
    paths = shard_paths(cfg.layout.datasets, split)
    if not paths:
        raise ValueError(
            f"no {split} shards in {cfg.layout.datasets} for the intervals; run `srpipe curate` (>= 3 tiles)"
        )
    return errors_and_spreads(model, paths, cfg.loss.scored_border_px, scales(load_stats(cfg.run_path)))


def calibrate(cfg: Config, model: TrainedModel, split: str = "val") -> Calibration:
    """The model's Calibration on the run's `split` samples (inside the scored border crop)."""
    error, spread, samples, tiles = _split_pixels(cfg, model, split)
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


def calibrate_weights(name: str, run_dir: Path) -> dict:
    """Calibrate the weights `name` (packaged name or .pt path) on a run they never trained on: its validation split
    calibrates, its test split checks; both go into the .pt and its .json record. {level: coverage per band}."""
    cfg = load_config(run_dir)
    cfg = dataclasses.replace(cfg, infer=dataclasses.replace(cfg.infer, model=name))
    model, path = load_for_inference(cfg), weights_path(name, "weights")
    calibration = calibrate(cfg, model)
    test = _split_pixels(cfg, model, "test")
    checked = coverage(test[0], test[1], calibration, (0.8, 0.9, 0.95))
    check = {f"{a:.2f}": checked[:, j].round(4).tolist() for j, a in enumerate((0.8, 0.9, 0.95))}
    store_calibration(path, calibration)
    record_path = path.with_suffix(".json")
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    record["calibration"] = calibration.to_json() | {
        "calibrated_on": f"{cfg.run_path.name}: the validation split of a run these weights never trained on",
        "coverage_on_its_test_split": check | {"pixels": int(test[0].shape[1]), "samples": test[2]},
    }
    state.write_text(record_path, json.dumps(record, indent=1) + "\n")
    return check


def main(argv: list[str] | None = None) -> None:
    """`python -m srpipe.training.calibrate WEIGHTS RUN_DIR`: calibrate packaged weights (or a .pt) on a curated run
    they never trained on, e.g. `sample-x4` on runs/demo (its AOI is outside the weights' training area)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("weights")
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    check = calibrate_weights(args.weights, args.run_dir)
    print(f"calibrate: {args.weights} calibrated on {args.run_dir}; coverage on its test split: {check}")


if __name__ == "__main__":
    main()
