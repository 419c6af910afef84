"""Running units: which are pending (on today's inputs), run one and record it, run a shard, summarise a stage."""

from __future__ import annotations

import errno
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from srpipe import state
from srpipe.chain.fingerprint import ChainState, digest, fingerprint
from srpipe.chain.registry import ALL, Stage
from srpipe.config import Config
from srpipe.errors import StageError


@dataclass
class StageSummary:
    """What one stage did: units done now, skipped (current already), failed ({unit: error}), wall seconds."""

    stage: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    jobs: list[str] | None = None  # Slurm job ids when submitted rather than run ([] = nothing left to submit)

    def record(self, unit: str, error: str | None) -> None:
        """Count `unit` as done (no error) or failed with `error`."""
        if error is None:
            self.done.append(unit)
        else:
            self.failed[unit] = error

    @property
    def stopped(self) -> bool:
        """True when a whole-run stage failed: nothing downstream can run."""
        return ALL in self.failed

    def line(self) -> str:
        """One-line summary for the terminal (plus one line per failed unit)."""
        if self.jobs is not None:
            return f"{self.stage}: {', '.join(self.jobs) or 'nothing to submit (done, or queued already)'}"
        text = (
            f"{self.stage}: {len(self.done)} done, {len(self.skipped)} skipped (done before), "
            f"{len(self.failed)} failed in {self.seconds:.1f} s"
        )
        for unit, error in self.failed.items():
            text += f"\n  FAILED {unit}: {error.splitlines()[-1] if error else ''}"
        return text


@dataclass
class Pending:
    """A unit to run: what it reads now (`inputs`), or why it cannot run yet (`problem`: stale upstream work)."""

    unit: str
    inputs: dict[str, Any]
    problem: str = ""


def pending_units(
    cfg: Config, stage: Stage, units: list[str], states: ChainState | None = None
) -> tuple[list[Pending], list[str]]:
    """(units not done on today's inputs, with their inputs; units current already), from `states` (the chain
    run's, or a new one)."""
    states = ChainState(cfg) if states is None else states
    todo, current = [], []
    for unit in units:
        now = states.unit_state(stage, unit)
        if now.status == "done":
            current.append(unit)
        else:
            todo.append(Pending(unit, now.inputs, states.upstream_problem(stage, unit)))
    return todo, current


def _set_aside(cfg: Config, stage: Stage, unit: str, fp: str) -> None:
    """Before a resumable unit runs: if its resumable state was made from other inputs, move it aside whole."""
    assert stage.restart is not None
    folder = stage.restart(cfg)
    started = state.started_info(cfg.run_path, stage.name, unit).get("inputs")
    if folder.exists() and started != fp:
        aside = folder.with_name(f"{folder.name}.previous")
        shutil.rmtree(aside, ignore_errors=True)
        folder.rename(aside)
        print(f"{stage.name}: inputs changed since {folder} was started; kept it aside as {aside.name}", flush=True)


def _version(cfg: Config, stage: Stage, fp: str) -> str:
    """The unit's version that downstream units read: its fingerprint, plus its product's content hash."""
    if stage.product is None:
        return fp
    product = stage.product(cfg)
    return digest([fp, state.file_sha256(product) if product.exists() else None])


def run_unit(cfg: Config, stage: Stage, pending: Pending, rank: int = 0, log_path: str = "") -> tuple[str, str | None]:
    """Run one unit on the inputs `pending_units` found and record it done (with their fingerprint) or failed."""
    unit, fp = pending.unit, fingerprint(pending.inputs)
    try:
        if pending.problem:
            raise StageError(pending.problem)
        if stage.restart is not None and rank == 0:
            _set_aside(cfg, stage, unit, fp)
            state.mark_started(cfg.run_path, stage.name, unit, {"inputs": fp})
        fn = stage.function()
        info = (fn(cfg, unit) if stage.mapped else fn(cfg)) or {}
    except Exception as exc:  # noqa: BLE001 - any failure of one unit must not stop the others
        return record_outcome(cfg, stage, pending, exc, rank, log_path)
    return record_outcome(cfg, stage, pending, info, rank, log_path)


def record_outcome(
    cfg: Config, stage: Stage, pending: Pending, result: dict | Exception, rank: int = 0, log_path: str = ""
) -> tuple[str, str | None]:
    """Record `pending`'s unit done (with its fingerprint and `result`'s info) or failed (`result` an exception)."""
    unit, fp = pending.unit, fingerprint(pending.inputs)
    try:
        if not isinstance(result, Exception):
            if rank == 0:
                record = {**result, "inputs": fp, "version": _version(cfg, stage, fp), "inputs_detail": pending.inputs}
                state.mark_done(cfg.run_path, stage.name, unit, record)
            else:  # the other ranks' results beside rank 0's marker (e.g. their parameter checksums)
                state.write_json(cfg.layout.state(stage.name) / f"{unit}.rank{rank}.json", {**result, "error": None})
            return unit, None
    except OSError as exc:  # the done marker itself could not be written (e.g. a full disk): the unit is not done
        result = exc
    message = error_line(cfg, result)
    trace = "".join(traceback.format_exception(result))
    try:
        if rank == 0:
            state.mark_failed(cfg.run_path, stage.name, unit, message, trace, log_path=log_path)
        else:
            state.write_json(cfg.layout.state(stage.name) / f"{unit}.rank{rank}.json", {"error": message})
    except OSError:  # no room even for the failure record: the summary still names the unit and the reason
        pass
    return unit, message


def error_line(cfg: Config, exc: BaseException) -> str:
    """`Type: message` of a unit's failure; a full disk (ENOSPC, EDQUOT) says so, with the path and the fix."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = exc.filename or cfg.run_path
        free = shutil.disk_usage(cfg.run_path).free if cfg.run_path.exists() else 0
        return (
            f"DiskFullError: the disk is full writing {where} ({exc.strerror}; {free / 2**20:.1f} MiB free under "
            f"{cfg.run_path}): free space there and re-run (finished units are kept)"
        )
    return f"{type(exc).__name__}: {exc}"


def run_shard(
    cfg: Config,
    stage: Stage,
    todo: list[Pending],
    log_path: str = "",
    on_result: Callable[[str, str | None], None] | None = None,
) -> list[tuple[str, str | None]]:
    """Run a batch stage's pending units as one shard (`stage.batch`) and record each unit as it finishes.

    Units whose upstream is stale fail before the shard starts; a failure inside the shard fails its unit only,
    unless the shard itself breaks (e.g. the model cannot load): then every unit it had not finished fails with it.
    """
    results: list[tuple[str, str | None]] = []

    def note(pending: Pending, outcome: dict | Exception) -> None:
        results.append(record_outcome(cfg, stage, pending, outcome, 0, log_path))
        if on_result is not None:
            on_result(*results[-1])

    runnable = []
    for pending in todo:
        if pending.problem:
            note(pending, StageError(pending.problem))
        else:
            runnable.append(pending)
    by_unit = {p.unit: p for p in runnable}
    try:
        for unit, outcome in stage.batch_function()(cfg, list(by_unit)):
            note(by_unit.pop(unit), outcome)
    except Exception as exc:  # noqa: BLE001 - the shard broke: its unfinished units fail with the reason
        for pending in list(by_unit.values()):
            note(pending, exc)
    for pending in by_unit.values():  # a shard that forgot a unit is a bug: say so on the unit
        note(pending, StageError(f"{stage.batch} returned no result for {pending.unit}"))
    return results
