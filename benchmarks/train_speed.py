"""Training speed benchmark: samples/s of srpipe's real training step on the demo's data, and where the time goes.

Runs `srpipe.training.train`'s own step (`_setup` + `_train_step`, every loss term on) on a curated demo run for a
fixed number of steps, then the same step with one part switched off at a time, so the difference is that part's
cost: the loader, ShiftNet registration, the perceptual net, SSIM, mean matching, augmentation. Writes
benchmarks/results/train_speed.json. Each variant runs in processes of its own, alternating with the others; `--before
REF` also times a git ref's code (its full step) the same way, for the speed-up.
Usage: python benchmarks/train_speed.py RUN_DIR [--before c6635d5] [--repeats 3]
(RUN_DIR: a curated run, e.g. after `srpipe curate configs/demo.toml`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import tomli_w
import torch
from provenance import provenance

from srpipe.config import load_config
from srpipe.training.train import _Progress, _setup, _train_step

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "train_speed.json"
# prints {section: [keys]} of the srpipe config on PYTHONPATH (for an older checkout, whose config knows fewer keys)
KNOWN_KEYS = (
    "import dataclasses, json; from srpipe.config import Config; c = Config(); print(json.dumps({f.name: "
    "[g.name for g in dataclasses.fields(getattr(c, f.name))] for f in dataclasses.fields(c) "
    "if dataclasses.is_dataclass(getattr(c, f.name))}))"
)
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


def _child(cfg, steps: int, rounds: int) -> dict:
    """Median seconds per step and per batch fetch of one setup over `rounds` rounds of `steps` steps."""
    runner = _runner(cfg)
    _round(runner, 2)  # warm-up
    times = [_round(runner, steps) for _ in range(rounds)]
    return {"s_per_step": float(np.median([(f + c) / steps for f, c in times])),
            "loader_s_per_step": float(np.median([f / steps for f, _ in times]))}  # fmt: skip


def _config(run_dir: Path, before: Path | None) -> Path:
    """The run's config, less the keys the `--before` checkout's config does not know (it rejects unknown keys)."""
    if before is None:
        return run_dir / "config.toml"
    env = {**os.environ, "PYTHONPATH": str(before)}
    cmd = [sys.executable, "-c", KNOWN_KEYS]  # in `before`: -c puts the working directory first on sys.path
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=before, check=True)
    known = json.loads(out.stdout)
    settings = tomllib.loads((run_dir / "config.toml").read_text())
    kept = {k: v for k, v in settings.items() if not isinstance(v, dict)}
    kept |= {k: {key: x for key, x in v.items() if key in known[k]} for k, v in settings.items() if k in known}
    path = Path(tempfile.mkdtemp()) / "config.toml"
    path.write_text(tomli_w.dumps(kept))
    return path


def _measure(code: Path, config: Path, variant: str, steps: int, rounds: int) -> dict:
    """One variant timed in a fresh process running the srpipe of `code` (processes share nothing)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [sys.executable, __file__, "--child", variant, "--config", str(config), "--steps", str(steps),
           "--rounds", str(rounds), "unused"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=code, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per process")
    parser.add_argument("--repeats", type=int, default=3, help="processes per variant, alternating over variants")
    parser.add_argument("--before", help="a git ref: also time its full step, alternating with this code's")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        cfg = _variant(load_config(args.config), args.child)
        print(json.dumps(_child(cfg, args.steps, args.rounds)))
        return
    measured = provenance()
    jobs = [("after", REPO, _config(args.run_dir, None), v) for v in VARIANTS]
    if args.before:
        worktree = Path(tempfile.mkdtemp()) / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-f", str(worktree), args.before], check=True,
                       capture_output=True)  # fmt: skip
        jobs.insert(0, ("before", worktree, _config(args.run_dir, worktree), "full step"))
    times: dict[tuple[str, str], list[float]] = {(code, v): [] for code, _, _, v in jobs}
    for _ in range(args.repeats):  # alternate: a machine shared with other work slows every job alike
        for code, path, config, variant in jobs:
            times[code, variant].append(_measure(path, config, variant, args.steps, args.rounds)["s_per_step"])
    _write(args, load_config(args.run_dir / "config.toml"), times, measured)


def _variant(base, name: str):
    loss, train = VARIANTS[name]
    return dataclasses.replace(
        base, loss=dataclasses.replace(base.loss, **loss), train=dataclasses.replace(base.train, **train)
    )


def _write(args: argparse.Namespace, base, times: dict[tuple[str, str], list[float]], measured: dict) -> None:
    """Print and write benchmarks/results/train_speed.json: `measured` (provenance() at the start), samples/s per job,
    shares of the step, the speed-up."""
    batch = base.train.batch_size
    rows = {f"{code}: {v}": {"s_per_step": round(float(np.median(t)), 4), "samples_per_s":
            round(batch / float(np.median(t)), 1), "runs": [round(x, 4) for x in t]}
            for (code, v), t in times.items()}  # fmt: skip
    full = rows["after: full step"]["s_per_step"]
    for name, row in rows.items():
        if name.startswith("after: no"):
            row["share_of_full_step"] = round(1 - row["s_per_step"] / full, 3)
        print(f"{name:34s} {row['samples_per_s']:7.1f} samples/s  {row['s_per_step'] * 1e3:7.1f} ms/step")
    results = measured | {"before": args.before, "cpus": os.cpu_count(), "batch_size": batch,
               "model": dataclasses.asdict(base.model), "steps_per_round": args.steps, "rounds": args.rounds,
               "repeats": args.repeats, "jobs": rows}  # fmt: skip
    if "before: full step" in rows:
        results["speedup_full_step"] = round(rows["before: full step"]["s_per_step"] / full, 2)
        print(f"speed-up of the full step: {results['speedup_full_step']}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
