"""The chain of stages, each a function of (config, unit) -> files, and how local mode runs them in order."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from srpipe import state
from srpipe.config import Config
from srpipe.curate.reduce import curate_reduce
from srpipe.curate.tile import curate_tile
from srpipe.delineation import delineation_dir, train_delineation
from srpipe.download import download_tile
from srpipe.evaluate import evaluate
from srpipe.grid import plan, read_grid
from srpipe.infer import infer_tile
from srpipe.launch import StageSummary, run_single, run_units
from srpipe.mosaic import mosaic
from srpipe.train import model_dir, train


@dataclass(frozen=True)
class Stage:
    """A stage: per-tile (`per_tile` fn over grid tiles) or whole-run (`single` fn), and what its result depends on."""

    name: str
    per_tile: Callable[[Config, str], dict] | None = None
    single: Callable[[Config], dict] | None = None
    inputs: Callable[[Config], str] | None = None  # fingerprint of the inputs; a change redoes a whole-run stage


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _file_stamp(path: Path) -> tuple:
    return (str(path), path.stat().st_mtime_ns, path.stat().st_size) if path.exists() else (str(path), None)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("download", per_tile=download_tile),
        Stage("curate", per_tile=curate_tile),
        Stage(
            "curate-reduce",
            single=curate_reduce,
            inputs=lambda c: _fingerprint(state.done_units(c.run_path, "curate"), c.curate),  # thresholds: reduce-side
        ),
        Stage(
            "train-delineation",
            single=train_delineation,
            inputs=lambda c: _fingerprint(_file_stamp(c.run_path / "curation" / "stats.json"), c.delineation),
        ),
        Stage(
            "train",
            single=train,
            inputs=lambda c: _fingerprint(
                _file_stamp(c.run_path / "curation" / "stats.json"), _file_stamp(delineation_dir(c) / "model.pt")
            ),
        ),
        Stage("infer", per_tile=infer_tile),
        Stage("mosaic", single=mosaic, inputs=lambda c: _fingerprint(state.done_units(c.run_path, "infer"))),
        Stage("evaluate", single=evaluate, inputs=lambda c: _fingerprint(_file_stamp(model_dir(c) / "model.pt"))),
    )
}
CHAIN = tuple(STAGES)


def run_stage(
    cfg: Config,
    name: str,
    tiles: list[str] | None = None,
    workers: int | None = None,
    rank: int = 0,
    log_path: str = "",
) -> StageSummary:
    """Run one stage over `tiles` (default: every tile of the grid), skipping finished units.

    `rank`: this process's MPI rank when a whole-run stage (train) runs on many; rank 0 alone clears and marks.
    """
    stage = STAGES[name]
    if stage.per_tile is not None:
        units = tiles or [t.tile_id for t in read_grid(cfg.run_path)]
        return run_units(cfg, name, stage.per_tile, units, workers, log_path=log_path)
    fingerprint = stage.inputs(cfg) if stage.inputs else ""
    stale = state.done_info(cfg.run_path, name, "all").get("inputs") != fingerprint
    if stale and rank == 0:
        state.clear_stage(cfg.run_path, name)
    assert stage.single is not None
    single = stage.single
    fn = lambda c: {**(single(c) or {}), "inputs": fingerprint}  # noqa: E731
    return run_single(cfg, name, fn, force=stale, rank=rank, log_path=log_path)


def run_plan(cfg: Config) -> StageSummary:
    """Plan the run (always re-checked: cheap, and it guards the grid against a changed config)."""
    return run_single(cfg, "plan", plan, force=True)
