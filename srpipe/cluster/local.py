"""The local executor: a stage's units in this process or on a local process pool; MPI ranks read at the edge."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

from tqdm import tqdm

from srpipe.chain import ALL, ChainState, Stage, StageSummary, pending_units, run_shard, run_unit
from srpipe.config import Config
from srpipe.training.launch import launcher_rank, launcher_size


def _init_worker() -> None:
    """Keep each pool worker to one compute thread: the pool is the parallelism."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def run_units(
    cfg: Config,
    stage: Stage,
    units: list[str],
    workers: int = 1,
    rank: int = 0,
    log_path: str = "",
    on_done: Callable[[str], None] | None = None,
    states: ChainState | None = None,
) -> StageSummary:
    """Run every unit of `units` not done on today's inputs, on `workers` processes, with a progress bar.

    `on_done(unit)` runs in this process as each unit finishes (e.g. a Slurm task's ledger); `states`: the chain
    run's unit states (default: read here).
    """
    start = time.perf_counter()
    summary = StageSummary(stage.name)
    todo, summary.skipped = pending_units(cfg, stage, units, states)
    workers = max(1, min(workers, len(todo) or 1))
    bar = tqdm(total=len(todo), desc=stage.name, unit="tile" if stage.per_tile else "unit", disable=not todo)
    results = []
    if stage.batch and todo and rank == 0:  # one shard here: it loads the model once and batches across units

        def progress(unit: str, error: str | None) -> None:
            if on_done is not None and error is None:
                on_done(unit)
            bar.update()

        results = run_shard(cfg, stage, todo, log_path, progress)
    elif workers == 1:
        for pending in todo:
            results.append(run_unit(cfg, stage, pending, rank, log_path))
            if on_done is not None and results[-1][1] is None:
                on_done(pending.unit)
            bar.update()
    else:
        # spawn, not fork: torch's thread pools do not survive a fork
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            futures = [pool.submit(run_unit, cfg, stage, pending, rank, log_path) for pending in todo]
            for future in as_completed(futures):
                results.append(future.result())
                if on_done is not None and results[-1][1] is None:
                    on_done(results[-1][0])
                bar.update()
    bar.close()
    for unit, error in sorted(results):
        summary.record(unit, error)
    summary.seconds = time.perf_counter() - start
    return summary


@dataclass(frozen=True)
class LocalExecutor:
    """Run stages here: per-tile units on a pool of `workers`, split round-robin over `size` MPI ranks."""

    workers: int = 1
    rank: int = 0
    size: int = 1

    @classmethod
    def from_launcher(cls, workers: int) -> LocalExecutor:
        """This process's share under `mpirun` / `srun` (one rank, one worker each), else a pool of `workers`."""
        rank, size = launcher_rank(), launcher_size()
        return cls(1 if size > 1 else workers, rank, size)

    def run(
        self, cfg: Config, stage: Stage, units: list[str], after: StageSummary | None, states: ChainState | None = None
    ) -> StageSummary:
        """Run `stage` now (`after` has already finished: the chain is sequential here)."""
        if stage.mapped:
            return run_units(cfg, stage, units[self.rank :: self.size], self.workers, states=states)
        if self.size > 1 and not stage.mpi:  # e.g. the reduce needs every rank's map: run it after, on one process
            print(f"{stage.name}: not run under {self.size} ranks; run `srpipe {stage.name}` after them", flush=True)
            return StageSummary(stage.name)
        return run_units(cfg, stage, [ALL], 1, rank=self.rank, states=states)
