"""What the calibrated intervals cost the infer stage, per tile: the same shard inferred three ways, alternating.

A planned synthetic run (as benchmarks/infer_throughput.py plans it: 2.4 km tiles, a method-default HighRes-Net at
random init, K = 8; speed does not depend on the weights or on the calibration's values) is inferred with
`infer.self_ensemble` alone (the SR the intervals come with), with `infer.uncertainty` (the spread twin), and with
`infer.interval = 0.9` and `= [0.8, 0.9, 0.95]` (the twin with one and three levels of half-widths). Each way runs
`--repeats` times, the ways alternating, every run from model load to the last COG (`infer.infer_shard`); medians
of seconds per tile and the intervals' extra share of the stage's time go to benchmarks/results/interval_cost.json.
Usage: python benchmarks/interval_cost.py [--tiles 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from infer_throughput import _run
from provenance import provenance

from srpipe.config import Config
from srpipe.data.grid import read_grid
from srpipe.infer import stage as infer
from srpipe.models.calibration import LEVELS, Calibration
from srpipe.models.trained import MODEL_FILE

RESULTS = Path(__file__).resolve().parent / "results" / "interval_cost.json"
WAYS = {  # name: the [infer] settings
    "sr (self-ensemble)": {"self_ensemble": True},
    "sr + spread": {"self_ensemble": True, "uncertainty": True},
    "sr + spread + interval 0.9": {"self_ensemble": True, "interval": 0.9},
    "sr + spread + intervals 0.8, 0.9, 0.95": {"self_ensemble": True, "interval": (0.8, 0.9, 0.95)},
}


def _calibrate(cfg: Config) -> None:
    """Give the run's model.pt a calibration (q = 1.6 everywhere): its values do not change what writing costs."""
    path = cfg.layout.model(cfg.train.name) / MODEL_FILE
    saved = torch.load(path, weights_only=False)
    calibration = Calibration(LEVELS, tuple((1.6,) * len(LEVELS) for _ in range(4)), (0.01,) * 4, 1, 1, "val", ())
    torch.save({**saved, "calibration": calibration.to_json()}, path)


def _timed(cfg: Config, settings: dict, tiles: list[str]) -> float:
    """Seconds of one infer of `tiles` under `settings` (predictions removed first: every run writes them all)."""
    shutil.rmtree(cfg.run_path / "predictions", ignore_errors=True)
    shutil.rmtree(cfg.run_path / "_state" / "infer", ignore_errors=True)
    run = dataclasses.replace(cfg, infer=dataclasses.replace(cfg.infer, **settings))
    start = time.perf_counter()
    results = dict(infer.infer_shard(run, tiles))
    seconds = time.perf_counter() - start
    failed = {t: str(r) for t, r in results.items() if isinstance(r, Exception)}
    if failed:
        raise SystemExit(f"infer failed: {failed}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    measured = provenance()
    base = Path(tempfile.mkdtemp(prefix="interval-cost-"))
    try:
        cfg = _run(base, args.tiles, 1, 1)
        _calibrate(cfg)
        tiles = [t.tile_id for t in read_grid(cfg.run_path)]
        _timed(cfg, WAYS["sr (self-ensemble)"], tiles[:1])  # warm-up: imports, caches
        runs: dict[str, list[float]] = {name: [] for name in WAYS}
        for _ in range(args.repeats):
            for name, settings in WAYS.items():
                runs[name].append(_timed(cfg, settings, tiles) / len(tiles))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    per_tile = {name: float(np.median(times)) for name, times in runs.items()}
    sr, spread, interval, intervals = per_tile.values()
    result = measured | {
        "cpus": os.cpu_count(),
        "tiles": len(tiles),
        "repeats": args.repeats,
        "model": dataclasses.asdict(cfg.model),
        "seconds_per_tile": {k: round(v, 3) for k, v in per_tile.items()},
        "runs_seconds_per_tile": {k: [round(t, 3) for t in v] for k, v in runs.items()},
        "interval_0.9_extra_share_of_sr": round(interval / sr - 1, 4),
        "interval_0.9_extra_share_of_sr_plus_spread": round(interval / spread - 1, 4),
        "intervals_3_levels_extra_share_of_sr": round(intervals / sr - 1, 4),
        "target": "intervals cost <= 15 % of the infer stage's time per tile",
    }
    for name, seconds in per_tile.items():
        print(f"{name:42s} {seconds:7.2f} s/tile")
    print(f"interval 0.9: +{interval / sr - 1:.1%} of SR alone, +{interval / spread - 1:.1%} of SR + spread; "
          f"three levels: +{intervals / sr - 1:.1%} of SR alone")  # fmt: skip
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
