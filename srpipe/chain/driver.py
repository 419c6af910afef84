"""The one driver: `run_chain(cfg, stages, units, executor)` runs stages in order where the executor says, with one
`ChainState` for the whole run; `plan_run` plans first."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from typing import Protocol

from srpipe import state
from srpipe.chain.fingerprint import ChainState
from srpipe.chain.registry import ALL, PLAN, STAGES, Stage, check_stage
from srpipe.chain.runner import StageSummary
from srpipe.config import Config
from srpipe.errors import ConfigError


class Executor(Protocol):
    """Where a stage's units run: in this process or a local pool (cluster.local), or as Slurm jobs (cluster.slurm)."""

    def run(
        self, cfg: Config, stage: Stage, units: list[str], after: StageSummary | None, states: ChainState | None = None
    ) -> StageSummary:
        """Run (or submit, after `after`'s jobs) the units of `stage`, with the chain run's `states`."""
        ...


def labelled_stages(cfg: Config, stages: Iterable[str]) -> list[str]:
    """`stages` without those that need labels when the source has none (a line says so); ConfigError if none is
    left."""
    from srpipe.sources import make_source

    wanted = [check_stage(name).name for name in stages]
    source = make_source(cfg.source, cfg.run_path)
    if source.has_labels:
        return wanted
    kept = [name for name in wanted if not STAGES[name].needs_labels]
    if not kept:
        raise ConfigError(
            f"{', '.join(wanted)} need labels, and {source.describe()} has none; choose a source with labels "
            "(source.name = 'sample' without source.native, 'sentinelhub' with a BYOC label collection, or 'stac' with "
            "source.vhr_files or source.vhr_stac)"
        )
    if kept != wanted:
        print(f"{source.describe()} has no labels: the chain is {', '.join(kept)} (infer.model's weights)", flush=True)
    return kept


def run_chain(
    cfg: Config,
    stages: Iterable[str],
    units: list[str] | None,
    executor: Executor,
    report: Callable[[StageSummary], None] = lambda s: None,
) -> list[StageSummary]:
    """Run `stages` in order over `units` (default: every tile) with `executor`; stop after a failed whole-run stage.

    Stages that need labels are left out when the source has none; unit states are computed once for the run.
    """
    summaries: list[StageSummary] = []
    previous = None
    states = ChainState(cfg)
    for name in labelled_stages(cfg, stages):
        stage = check_stage(name)
        previous = executor.run(cfg, stage, states.units(stage, units), previous, states)
        states.forget(name)
        summaries.append(previous)
        report(previous)
        if previous.stopped:
            break
    return summaries


def plan_run(cfg: Config) -> StageSummary:
    """Plan the run (always re-checked: cheap, and it guards the grid against a changed config)."""
    start, summary = time.perf_counter(), StageSummary(PLAN.name)
    try:
        state.mark_done(cfg.run_path, PLAN.name, ALL, PLAN.function()(cfg))
        summary.done.append(ALL)
    except ConfigError:
        raise  # a configuration error stops here with status 2, before anything is written
    except Exception as exc:  # noqa: BLE001 - reported like every stage's failure
        summary.failed[ALL] = f"{type(exc).__name__}: {exc}"
        state.mark_failed(cfg.run_path, PLAN.name, ALL, summary.failed[ALL], traceback.format_exc())
    summary.seconds = time.perf_counter() - start
    return summary
