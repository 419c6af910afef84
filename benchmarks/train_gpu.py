"""GPU training benchmark: the method's HighRes-Net (64 channels, 8 layers, ShiftNet 64, batch 32 per GPU) on a
curated run's shards, in bfloat16 and fp32, on one GPU and with DDP over every visible GPU.

Runs srpipe.training.train's own setup, distribution and
step for a fixed number of steps and records samples/s, peak GPU
memory per rank, and the time one epoch of the method's data (23,000 samples) would take at that rate. Runs unchanged
on any CUDA machine with srpipe installed; `--device cpu` runs the same code on the CPU (its smoke test).
Writes benchmarks/results/train_gpu.json (or --results PATH).
Usage: python benchmarks/train_gpu.py RUN_DIR [--steps 50] [--device cuda|cpu] [--results PATH]
(RUN_DIR: a curated run, e.g. runs/demo after `make demo`; its patches are the demo's 16 px, the method's are 32 px.)
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
from pathlib import Path

import torch
from provenance import provenance

from srpipe.config import ModelConfig, dump_config, load_config
from srpipe.training.train import _distribute, _epoch_loader, _Progress, _setup, _train_step

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "train_gpu.json"
METHOD_EPOCH_SAMPLES = 23_000  # the method's training set
METHOD_MODEL = ModelConfig(channels=64, encoder_layers=8, shiftnet_channels=64, shiftnet_pool=1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def child(config: Path, out: Path, steps: int) -> None:
    """One rank: 3 warm-up steps, then `steps` timed steps; write out/rank<r>.json."""
    cfg = load_config(config)
    run = _setup(cfg)
    progress = _Progress(start=time.perf_counter())
    run.budget_s, run.total_steps = float("inf"), 10**6
    _distribute(run)
    batches = _batches(run, progress)
    for _ in range(3):
        _train_step(run, progress, next(batches))
    _sync(run.device)
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    run.ranks.sum(torch.zeros(1, dtype=torch.float64))
    start = time.perf_counter()
    for _ in range(steps):
        _train_step(run, progress, next(batches))
    _sync(run.device)
    seconds = time.perf_counter() - start
    memory = torch.cuda.max_memory_allocated(run.device) / 2**20 if run.device.type == "cuda" else 0.0
    row = {
        "rank": run.ranks.rank,
        "ranks": run.ranks.size,
        "device": str(run.device),
        "amp": run.amp,
        "gpu": torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "",
        "s_per_step": seconds / steps,
        "peak_gpu_memory_mib": round(memory),
        "lr_shape": list(run.train_set[0]["lr"].shape),
    }  # fmt: skip (K frames, bands, px, px)
    (out / f"rank{run.ranks.rank}.json").write_text(json.dumps(row))
    run.ranks.close()


def _batches(run, progress):
    """Training batches in training's order, epoch after epoch."""
    while True:
        yield from _epoch_loader(run, progress)
        progress.epoch, progress.batch_done = progress.epoch + 1, 0


def _config(run_dir: Path, precision: str, batch: int, folder: Path) -> Path:
    """The run's config with the method's model, `batch` per rank, DDP, and bf16 autocast on or off."""
    cfg = load_config(run_dir / "config.toml")
    train = dataclasses.replace(cfg.train, batch_size=batch, backend="ddp", amp=precision == "bf16", max_minutes=0.0)
    path = folder / "config.toml"
    path.write_text(dump_config(dataclasses.replace(cfg, model=METHOD_MODEL, train=train, run_dir=str(run_dir))))
    return path


def run_job(run_dir: Path, precision: str, ranks: int, steps: int, batch: int, device: str) -> dict:
    """One job (1 rank, or DDP over `ranks` GPUs by torchrun); the slowest rank's step sets the rate."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = _config(run_dir, precision, batch, folder)
        prefix = [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node", str(ranks), "--no-python"]
        cmd = [*(prefix if ranks > 1 else []), sys.executable, __file__, "--child", str(config), "--out", tmp,
               "--steps", str(steps), str(run_dir)]  # fmt: skip
        env = {**os.environ, "PYTHONWARNINGS": "ignore", **({"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {})}
        subprocess.run(cmd, env=env, check=True, timeout=3600)
        rows = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(ranks)]
    step_s = max(r["s_per_step"] for r in rows)
    samples_per_s = batch * ranks / step_s
    return {"precision": precision, "ranks": ranks, "batch_per_rank": batch, "device": rows[0]["device"],
            "gpu": rows[0]["gpu"], "lr_shape": rows[0]["lr_shape"], "amp_active": rows[0]["amp"],
            "samples_per_s": round(samples_per_s, 1),
            "peak_gpu_memory_mib_per_rank": [r["peak_gpu_memory_mib"] for r in rows],
            "method_epoch_minutes": round(METHOD_EPOCH_SAMPLES / samples_per_s / 60, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=32, help="samples per rank (the method's 32)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.out, args.steps)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("train_gpu.py: no CUDA device visible; run it on a GPU machine (or --device cpu for its smoke test)")
    measured = provenance()
    gpus = torch.cuda.device_count() if args.device == "cuda" else 1
    rows = []
    for precision in ("bf16", "fp32"):
        for ranks in sorted({1, gpus}):
            rows.append(run_job(args.run_dir.resolve(), precision, ranks, args.steps, args.batch, args.device))
            r = rows[-1]
            memory = max(r["peak_gpu_memory_mib_per_rank"])
            print(f"{precision} {ranks} rank(s) on {r['gpu'] or r['device']}: {r['samples_per_s']} samples/s, "
                  f"{memory} MiB/rank, epoch of 23,000: {r['method_epoch_minutes']} min")  # fmt: skip
    results = measured | {"cuda": torch.version.cuda, "lr_sample_shape": rows[0]["lr_shape"],
               "model": dataclasses.asdict(METHOD_MODEL), "steps": args.steps,
               "jobs": rows}  # fmt: skip
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
