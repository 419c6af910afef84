"""Where units of work run: in-process or on a local process pool (local mode). Stages never know which."""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from srpipe import state
from srpipe.config import Config

UnitFn = Callable[[Config, str], dict]


@dataclass
class StageSummary:
    """What one stage did: units done now, skipped (done before), failed ({unit: error}), wall seconds."""

    stage: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def record(self, unit: str, error: str | None) -> None:
        """Count `unit` as done (no error) or failed with `error`."""
        if error is None:
            self.done.append(unit)
        else:
            self.failed[unit] = error

    def line(self) -> str:
        """One-line summary for the terminal."""
        text = (
            f"{self.stage}: {len(self.done)} done, {len(self.skipped)} skipped (done before), "
            f"{len(self.failed)} failed in {self.seconds:.1f} s"
        )
        for unit, error in self.failed.items():
            text += f"\n  FAILED {unit}: {error.splitlines()[-1] if error else ''}"
        return text


def run_unit(fn: UnitFn, cfg: Config, stage: str, unit: str, log_path: str = "") -> tuple[str, str | None]:
    """Run one unit, recording done or failed (with `log_path`, its task's log); return (unit, error or None)."""
    try:
        info = fn(cfg, unit) or {}
        state.mark_done(cfg.run_path, stage, unit, info)
        return unit, None
    except Exception as exc:  # noqa: BLE001 - any failure of one unit must not stop the others
        message = f"{type(exc).__name__}: {exc}"
        state.mark_failed(cfg.run_path, stage, unit, message, traceback.format_exc(), log_path=log_path)
        return unit, message


def _init_worker() -> None:
    """Keep each pool worker to one compute thread: the pool is the parallelism."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def run_units(
    cfg: Config, stage: str, fn: UnitFn, units: Sequence[str], workers: int | None = None, log_path: str = ""
) -> StageSummary:
    """Run `fn(cfg, unit)` for every unit not yet done, on `workers` processes, with a progress bar."""
    start = time.perf_counter()
    summary = StageSummary(stage)
    todo = []
    for unit in units:
        (summary.skipped if state.is_done(cfg.run_path, stage, unit) else todo).append(unit)
    workers = max(1, min(workers or cfg.workers, len(todo) or 1))
    bar = tqdm(total=len(todo), desc=stage, unit="tile", disable=not todo)
    if workers == 1:
        results = []
        for unit in todo:
            results.append(run_unit(fn, cfg, stage, unit, log_path))
            bar.update()
    else:
        # spawn, not fork: torch's thread pools do not survive a fork
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            futures = [pool.submit(run_unit, fn, cfg, stage, unit, log_path) for unit in todo]
            results = []
            for future in as_completed(futures):
                results.append(future.result())
                bar.update()
    bar.close()
    for unit, error in sorted(results):
        summary.record(unit, error)
    summary.seconds = time.perf_counter() - start
    return summary


def run_single(
    cfg: Config, stage: str, fn: Callable[[Config], dict], force: bool = False, rank: int = 0, log_path: str = ""
) -> StageSummary:
    """Run a whole-run stage (one unit named 'all') in-process, skipping it when done.

    Under MPI every rank runs `fn`; rank 0 alone writes the markers, the others `_state/<stage>/all.rank<N>.json`.
    """
    summary = StageSummary(stage)
    start = time.perf_counter()
    if not force and state.is_done(cfg.run_path, stage, "all"):
        summary.skipped.append("all")
    elif rank != 0:
        try:
            info, error = fn(cfg) or {}, None
        except Exception as exc:  # noqa: BLE001 - reported like rank 0's failures
            info, error = {}, f"{type(exc).__name__}: {exc}"
        state.write_json(cfg.run_path / "_state" / stage / f"all.rank{rank}.json", {**info, "error": error})
        summary.record("all", error)
    else:
        summary.record(*run_unit(lambda c, _u: fn(c), cfg, stage, "all", log_path))
    summary.seconds = time.perf_counter() - start
    return summary


def launcher_rank(environ: dict[str, str] | None = None) -> int:
    """This process's MPI rank as set by `srun --mpi=pmix` or `mpirun` (0 without a launcher); read at the edge."""
    env = os.environ if environ is None else environ
    for key in ("PMIX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if env.get(key, "").isdigit():
            return int(env[key])
    return int(env["SLURM_PROCID"]) if env.get("SLURM_NTASKS", "1") != "1" and env.get("SLURM_PROCID") else 0


def launcher_size(environ: dict[str, str] | None = None) -> int:
    """How many ranks `srun` or `mpirun` started (1 without a launcher)."""
    env = os.environ if environ is None else environ
    for key in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"):
        if env.get(key, "").isdigit():
            return int(env[key])
    return 1


def run_dir_exists(cfg: Config) -> bool:
    """True when plan has written this run's directory."""
    return (Path(cfg.run_dir) / "grid.gpkg").exists()
