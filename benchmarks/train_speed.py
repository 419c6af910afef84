"""Training speed benchmark: samples/s of srpipe's real training step on the demo's data, and where the time goes.

Runs `srpipe.train`'s own step (`_setup` + `_train_step`, every loss term on) on a curated demo run for a fixed number
of steps, then the same step with one part switched off at a time, so the difference is that part's cost: the loader,
ShiftNet registration, the perceptual net, SSIM, mean matching, augmentation. Writes
benchmarks/results/train_speed.json.
Usage: python benchmarks/train_speed.py RUN_DIR [--steps 5 --rounds 6] [--label before]
(RUN_DIR: a curated run, e.g. after `srpipe curate configs/demo.toml`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from srpipe.config import load_config
from srpipe.train import _Progress, _setup, _train_step

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "train_speed.json"
VARIANTS = {  # name -> (loss overrides, train overrides); each switches one part off
    "full step": ({}, {}),
    "no perceptual": ({"perceptual_weight": 0.0}, {}),
    "no ssim": ({"ssim_weight": 0.0}, {}),
    "no shiftnet registration": ({"register": False}, {}),
    "no mean matching": ({"mean_match_weight": 0.0}, {}),
    "no augmentation": ({}, {"augment": False}),
}


def _runner(cfg):
    """A training setup, its progress and an endless batch iterator (shuffled, as training draws them)."""
    run = _setup(cfg)
    progress = _Progress(start=time.perf_counter())
    run.budget_s, run.total_steps = float("inf"), 10**6

    def batches():
        while True:
            yield from torch.utils.data.DataLoader(run.train_set, batch_size=cfg.train.batch_size, shuffle=True)

    return run, progress, batches()


def _round(runner, steps: int) -> tuple[float, float]:
    """Seconds fetching batches and seconds in `_train_step`, over `steps` steps."""
    run, progress, batches = runner
    fetch = compute = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        _train_step(run, progress, batch)
        fetch, compute = fetch + t1 - t0, compute + time.perf_counter() - t1
    return fetch, compute


def _time_variants(cfgs: dict, steps: int, rounds: int) -> dict:
    """Median seconds per step of each variant over `rounds` interleaved rounds of `steps` steps (paired timing:
    a machine shared with other work slows every variant alike)."""
    runners = {name: _runner(cfg) for name, cfg in cfgs.items()}
    for runner in runners.values():
        _round(runner, 2)  # warm-up
    per_step: dict[str, list[float]] = {name: [] for name in cfgs}
    fetches: dict[str, list[float]] = {name: [] for name in cfgs}
    for _ in range(rounds):
        for name, runner in runners.items():
            fetch, compute = _round(runner, steps)
            per_step[name].append((fetch + compute) / steps)
            fetches[name].append(fetch / steps)
    rows = {}
    for name, cfg in cfgs.items():
        s = float(np.median(per_step[name]))
        rows[name] = {
            "s_per_step": round(s, 4),
            "samples_per_s": round(cfg.train.batch_size / s, 1),
            "loader_s_per_step": round(float(np.median(fetches[name])), 4),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds per variant")
    parser.add_argument("--label", default="after", help="key of this measurement in the results file")
    parser.add_argument("--config", type=Path, help="config to load instead of RUN_DIR/config.toml (older code)")
    parser.add_argument("--only-full", action="store_true", help="only the full step (e.g. for the older code)")
    args = parser.parse_args()
    base = load_config(args.config or args.run_dir / "config.toml")
    cfgs = {
        name: dataclasses.replace(
            base, loss=dataclasses.replace(base.loss, **loss), train=dataclasses.replace(base.train, **train)
        )
        for name, (loss, train) in VARIANTS.items()
        if name == "full step" or not args.only_full
    }
    rows = _time_variants(cfgs, args.steps, args.rounds)
    for name, row in rows.items():
        print(f"{name:26s} {row['samples_per_s']:7.1f} samples/s  {row['s_per_step'] * 1e3:7.1f} ms/step")
    full = rows["full step"]["s_per_step"]
    for name, row in rows.items():
        row["share_of_full_step"] = round(1 - row["s_per_step"] / full, 3) if name != "full step" else 0.0
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    results[args.label] = {
        "commit": commit.stdout.strip(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "batch_size": base.train.batch_size,
        "model": dataclasses.asdict(base.model),
        "variants": rows,
    }
    if "before" in results and "after" in results:
        b, a = results["before"]["variants"]["full step"], results["after"]["variants"]["full step"]
        results["speedup_full_step"] = round(a["samples_per_s"] / b["samples_per_s"], 2)
        print(f"speed-up of the full step: {results['speedup_full_step']}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
