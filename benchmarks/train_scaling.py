"""Training scaling benchmark: samples/s of 1 and 2 ranks on the same global batch, for Horovod and DDP, on one node
and across the two network-namespace nodes of hpc/slurm-local (`up.sh --nodes 2`).

Each rank runs
srpipe.training.train's own setup, distribution and step on a curated run with a fixed number of threads; a
2-rank job has half the per-rank batch of the 1-rank job, so both step the same global batch. Per job it records
samples/s (global), scaling efficiency = (2-rank samples/s) / (2 x 1-rank samples/s), the share of a step an
allreduce of all trained gradients takes (timed alone with the backend's own collective), each rank's peak RSS, and
the data loader's samples/s against the step's (the loader must never be the bottleneck). A control job runs two
unconnected processes of the 2-rank batch at once: what the machine itself allows two ranks (shared cores, caches and
memory bandwidth), so the rest of a gap is the distribution's. Jobs alternate over `--repeats` rounds; medians go
to benchmarks/results/train_scaling.json.
Usage: python benchmarks/train_scaling.py RUN_DIR [--batch 8] [--steps 20] [--repeats 3] [--no-two-node]
(RUN_DIR: a curated run, e.g. runs/demo after `make demo`).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from provenance import provenance

from srpipe.config import dump_config, load_config
from srpipe.training.train import _distribute, _epoch_loader, _Progress, _setup, _train_step

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "train_scaling.json"
BIN = Path(sys.executable).parent
TWO_NODE_CONF = Path("/etc/slurm-2node/slurm.conf")
ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "PYTHONWARNINGS": "ignore"}


def _cycle(run, progress):
    """Training batches in the order training draws them, epoch after epoch."""
    while True:
        yield from _epoch_loader(run, progress)
        progress.epoch, progress.batch_done = progress.epoch + 1, 0


def _timed_steps(run, progress, batches, steps: int) -> float:
    """Seconds for `steps` training steps, all ranks started and finished together."""
    run.ranks.sum(torch.zeros(1, dtype=torch.float64))
    start = time.perf_counter()
    for _ in range(steps):
        _train_step(run, progress, next(batches))
    run.ranks.sum(torch.zeros(1, dtype=torch.float64))
    return time.perf_counter() - start


def _timed_loader(run, progress, steps: int) -> float:
    """Seconds the loader takes to hand over `steps` batches on its own (no step)."""
    batches = _cycle(run, dataclasses.replace(progress))
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return time.perf_counter() - start


def _timed_allreduce(run, repeats: int = 10) -> float:
    """Seconds of one allreduce of a float32 buffer as large as all trained gradients (the backend's collective)."""
    n = sum(p.numel() for group in run.optimizer.param_groups for p in group["params"])
    flat = torch.ones(n, dtype=torch.float32)
    run.ranks.sum(flat)
    start = time.perf_counter()
    for _ in range(repeats):
        run.ranks.sum(flat)
    return (time.perf_counter() - start) / repeats


def child(config: Path, out: Path, steps: int, threads: int) -> None:
    """One rank: warm up, time the steps, the loader and the allreduce; write out/rank<r>.json."""
    torch.set_num_threads(threads)
    cfg = load_config(config)
    run = _setup(cfg)
    progress = _Progress(start=time.perf_counter())
    run.budget_s, run.total_steps = float("inf"), 10**6
    _distribute(run)
    batches = _cycle(run, progress)
    _timed_steps(run, progress, batches, 2)  # warm-up
    step_s = _timed_steps(run, progress, batches, steps) / steps
    loader_s = _timed_loader(run, progress, steps) / steps
    allreduce_s = _timed_allreduce(run) if run.ranks.size > 1 else 0.0
    row = {"rank": run.ranks.rank, "ranks": run.ranks.size, "backend": run.ranks.backend, "host": os.uname().nodename,
           "s_per_step": step_s, "loader_s_per_batch": loader_s, "allreduce_s": allreduce_s,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip
    (out / f"rank{run.ranks.rank}.json").write_text(json.dumps(row))
    run.ranks.close()


def _config(run_dir: Path, batch: int, backend: str, folder: Path) -> Path:
    """The run's config with this job's per-rank batch and backend, in `folder`."""
    cfg = load_config(run_dir / "config.toml")
    train = dataclasses.replace(cfg.train, batch_size=batch, backend=backend, loader_workers=0, max_minutes=0.0)
    path = folder / "config.toml"
    path.write_text(dump_config(dataclasses.replace(cfg, train=train)))
    return path


def _launcher(job: dict) -> tuple[list[str], dict[str, str]]:
    """The command prefix and extra environment that start `job`'s ranks."""
    if job["ranks"] == 1 or job["backend"] == "independent":
        return [], {}
    if job["where"] == "two nodes":
        srun = ["srun", "--nodes=2", "--ntasks-per-node=1", f"--cpus-per-task={job['threads']}", "--mpi=pmix"]
        return srun, {"SLURM_CONF": str(TWO_NODE_CONF), "OMPI_MCA_btl_tcp_if_include": "10.77.0.0/24"}
    if job["backend"] == "ddp":
        return [str(BIN / "torchrun"), "--nproc-per-node", "2", "--no-python"], {}
    return ["mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none"], {}


def run_job(job: dict, run_dir: Path, steps: int) -> list[dict]:
    """Start one job's ranks (or, for "independent", two unconnected processes at once) and read back their rows."""
    folder = Path(tempfile.mkdtemp(prefix="scaling-", dir=run_dir))  # under the run: both namespace nodes see it
    try:
        batch = job["global_batch"] // job["ranks"]
        config = _config(run_dir, batch, "ddp" if job["backend"] == "independent" else job["backend"], folder)
        prefix, env = _launcher(job)
        env = {**os.environ, **ENV, **env, "OMP_NUM_THREADS": str(job["threads"])}
        outs = [folder / str(i) for i in range(2 if job["backend"] == "independent" else 1)]
        procs = []
        for out in outs:
            out.mkdir()
            cmd = [*prefix, sys.executable, __file__, "--child", str(config), "--out", str(out),
                   "--steps", str(steps), "--threads", str(job["threads"]), str(run_dir)]  # fmt: skip
            with (out / "stderr.txt").open("w") as err:
                procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err))
        for proc, out in zip(procs, outs, strict=True):
            assert proc.wait(timeout=1800) == 0, (out / "stderr.txt").read_text()[-3000:]
        return [json.loads(p.read_text()) for out in outs for p in sorted(out.glob("rank*.json"))]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _jobs(global_batch: int, threads: int, two_node: bool) -> list[dict]:
    """1 rank and 2 ranks for each backend, on one node, and with two ranks across the two nodes when asked."""
    wheres = ["one node", "two nodes"] if two_node else ["one node"]
    backends = ["horovod", "ddp"] if (BIN / "horovodrun").exists() else ["ddp"]
    jobs = [{"backend": b, "ranks": 1, "where": "one node"} for b in backends]
    jobs += [{"backend": b, "ranks": 2, "where": w} for w, b in itertools.product(wheres, backends)]
    jobs.append({"backend": "independent", "ranks": 2, "where": "one node"})  # the machine's ceiling for 2 ranks
    return [{**j, "global_batch": global_batch, "threads": threads} for j in jobs]


def _summary(job: dict, rows: list[list[dict]]) -> dict:
    """Medians over repeats of one job: samples/s, the allreduce's share of a step, peak RSS, loader headroom."""
    step_s = float(np.median([max(r["s_per_step"] for r in rep) for rep in rows]))
    loader_s = float(np.median([max(r["loader_s_per_batch"] for r in rep) for rep in rows]))
    allreduce_s = float(np.median([max(r["allreduce_s"] for r in rep) for rep in rows]))
    per_rank_batch = job["global_batch"] // job["ranks"]
    return {**job, "samples_per_s": round(job["global_batch"] / step_s, 2), "s_per_step": round(step_s, 4),
            "allreduce_share_of_step": round(allreduce_s / step_s, 4),
            "peak_rss_mb_per_rank": [round(r["peak_rss_mb"]) for r in rows[-1]],
            "hosts": sorted({r["host"] for r in rows[-1]}),
            "loader_samples_per_s_per_rank": round(per_rank_batch / loader_s, 1),
            "step_samples_per_s_per_rank": round(per_rank_batch / step_s, 2),
            "runs_s_per_step": [round(max(r["s_per_step"] for r in rep), 4) for rep in rows]}  # fmt: skip


def _efficiency(rows: list[dict]) -> dict[str, float]:
    """(2-rank samples/s) / (2 x 1-rank samples/s) per backend and place. A 1-rank job runs the same single process
    for either backend, so the 1-rank rate is the median of all their runs (less noise than one job's three)."""
    single = [t for r in rows if r["ranks"] == 1 for t in r["runs_s_per_step"]]
    one = rows[0]["global_batch"] / float(np.median(single))
    return {f"{r['backend']}, {r['where']}": round(r["samples_per_s"] / (2 * one), 3)
            for r in rows if r["ranks"] == 2}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--batch", type=int, default=8, help="global batch (2 ranks: half each)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per job")
    parser.add_argument("--threads", type=int, default=1, help="threads per rank")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all jobs, alternating")
    parser.add_argument("--no-two-node", action="store_true", help="skip the two-namespace-node jobs")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.out, args.steps, args.threads)
        return
    measured = provenance()
    two_node = not args.no_two_node and TWO_NODE_CONF.exists()
    jobs = _jobs(args.batch, args.threads, two_node)
    runs: list[list[list[dict]]] = [[] for _ in jobs]
    for _ in range(args.repeats):  # alternate: a machine shared with other work slows every job alike
        for i, job in enumerate(jobs):
            runs[i].append(run_job(job, args.run_dir.resolve(), args.steps))
    _write(args, [_summary(job, rows) for job, rows in zip(jobs, runs, strict=True)], measured)


def _write(args: argparse.Namespace, rows: list[dict], measured: dict) -> None:
    """Print the table and write benchmarks/results/train_scaling.json after `measured` (provenance() at the start)."""
    efficiency = _efficiency(rows)
    for r in rows:
        eff = efficiency.get(f"{r['backend']}, {r['where']}", "") if r["ranks"] == 2 else ""
        print(f"{r['backend']:8s} {r['ranks']} rank(s) {r['where']:9s} {r['samples_per_s']:7.2f} samples/s  "
              f"allreduce {r['allreduce_share_of_step']:6.1%}  loader {r['loader_samples_per_s_per_rank']:8.1f} vs "
              f"step {r['step_samples_per_s_per_rank']:6.2f} samples/s/rank  efficiency {eff}")  # fmt: skip
    cfg = load_config(args.run_dir / "config.toml")
    results = measured | {"cpus": os.cpu_count(), "global_batch": args.batch,
               "threads_per_rank": args.threads, "steps": args.steps, "repeats": args.repeats,
               "model": dataclasses.asdict(cfg.model), "efficiency": efficiency, "jobs": rows}  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
