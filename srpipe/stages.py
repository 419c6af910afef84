"""The chain: each stage's function, what it reads, and the one driver `run_chain(cfg, stages, units, executor)`.

A unit's fingerprint hashes the config keys its stage reads, the input files it names (by content) and the versions
of the upstream units it reads (per tile, or every tile for a whole-run stage). A unit is done only while its recorded
fingerprint equals today's, so a changed setting redoes exactly the units it reaches and everything downstream.
The registry names stage functions as `module:function` and imports them only to run, so it imports no torch.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import shutil
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from srpipe import state
from srpipe.config import Config, config_to_dict
from srpipe.errors import StageError

ALL = "all"  # the one unit of a whole-run stage


@dataclass(frozen=True)
class Stage:
    """A stage: `target` ("module:function") over grid tiles (`per_tile`) or once per run, and what it reads."""

    name: str
    target: str
    per_tile: bool = False
    reads: tuple[str, ...] = ()  # config sections ("curate") or keys ("source.scale") it reads
    after: tuple[str, ...] = ()  # upstream stages whose outputs it reads
    files: Callable[[Config], list[str]] | None = None  # input files outside the run, hashed by content
    restart: Callable[[Config], Path] | None = None  # resumable state: set aside when the inputs change
    product: Callable[[Config], Path] | None = None  # the output file whose content hash downstream units read
    mpi: bool = False  # runs on every rank of an MPI job (the others: rank 0 only)
    units: Callable[[Config], list[str]] | None = None  # units of its own (e.g. mosaic's zone x date), not tiles
    reads_units: Callable[[str, dict[str, dict]], list[str]] | None = None  # (unit, upstream done records) -> read
    batch: str = ""  # "module:function" running a whole shard of units: fn(cfg, units) -> iter (unit, info | error)

    @property
    def mapped(self) -> bool:
        """True when the stage runs once per unit (tiles, or its own units), so arrays and ranks share it out."""
        return self.per_tile or self.units is not None

    def function(self) -> Callable[..., dict]:
        """The stage function: fn(cfg, unit) for a mapped stage, fn(cfg) for a whole-run one."""
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)

    def batch_function(self) -> Callable[[Config, list[str]], Iterator[tuple[str, dict | Exception]]]:
        """The shard function (`batch`): one call runs many units, loading what they share once."""
        module, _, name = self.batch.partition(":")
        return getattr(importlib.import_module(module), name)


def _parcels(cfg: Config) -> list[str]:
    return [cfg.delineation.parcels] if cfg.delineation.parcels else []


def _weights_file(name: str, key: str) -> list[str]:
    """[the file of weights setting `key`] (packaged name or path), or [] when it is not set."""
    if not name:
        return []
    from srpipe.weights import weights_path

    return [str(weights_path(name, key))]


def _init_weights(cfg: Config) -> list[str]:
    return _weights_file(cfg.train.init_from, "train.init_from")


def _infer_weights(cfg: Config) -> list[str]:
    return _weights_file(cfg.infer.model, "infer.model")


def _aoi(cfg: Config) -> list[str]:
    return [cfg.plan.aoi] if cfg.mosaic.mask_aoi and cfg.plan.aoi else []


ALL_DATES = "all"  # the date part of a mosaic unit whose dates were unknown when it was listed


def _mosaic_unit_name(epsg: int | str, date: str) -> str:
    """The mosaic unit of one UTM zone and date: '<epsg>_<YYYY-MM-DD>' (or '<epsg>_all')."""
    return f"{epsg}_{date}"


def _mosaic_units(cfg: Config) -> list[str]:
    """Zone x date units: from the dates infer wrote (its done records), else from `infer.dates` before it ran."""
    records = state.done_records(cfg.run_path, "infer")
    found = {_mosaic_unit_name(r["epsg"], d) for r in records.values() if "epsg" in r for d in r.get("dates", [])}
    if found:
        return sorted(found)
    from srpipe.grid import read_grid

    zones = sorted({t.epsg for t in read_grid(cfg.run_path)})
    dates = cfg.infer.dates
    wanted = [cfg.as_of_date.isoformat()] if dates == "latest" else [ALL_DATES] if dates == "all" else list(dates)
    return [_mosaic_unit_name(z, d) for z in zones for d in wanted]


def mosaic_reads(unit: str, records: dict[str, dict]) -> list[str]:
    """The inferred tiles a zone x date mosaic reads: those of its zone with an output on its date."""
    epsg, _, date = unit.partition("_")
    return sorted(
        t
        for t, r in records.items()
        if str(r.get("epsg")) == epsg and (date == ALL_DATES or date in r.get("dates", []))
    )


# what infer's outputs depend on; batch_size, loader_workers, threads, device and compile only change its speed
_INFER_OUTPUT_KEYS = (
    "n_frames",
    "date",
    "dates",
    "min_frames",
    "max_cloud_cover",
    "self_ensemble",
    "uncertainty",
    "output_dtype",
    "model",
)

_CURATE_MAP_KEYS = tuple(
    f"curate.{k}"
    for k in (
        "vhr_cloud_threshold",
        "vhr_max_cloud_cover",
        "s2_max_cloud_cover",
        "n_frames",
        "max_days_before",
        "lr_patch_px",
        "patches_per_tile",
        "percentiles",
        "pixels_per_tile",
        "noise_max_shift_px",
        "histmatch_reference",
        "pixels_per_sample",
    )
)

STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("download", "srpipe.download:download_tile", per_tile=True, reads=("source",)),
        Stage(
            "curate",
            "srpipe.curate.tile:curate_tile",
            per_tile=True,
            reads=("source.scale", "source.seed", *_CURATE_MAP_KEYS),
            after=("download",),
        ),
        Stage(
            "curate-reduce",
            "srpipe.curate.reduce:curate_reduce",
            reads=("source.scale", "source.seed", "source.lr_resolution_m", "curate", "train.seed"),
            after=("curate",),
        ),
        Stage(
            "train-delineation",
            "srpipe.delineation:train_delineation",
            reads=("source.scale", "curate.lr_patch_px", "delineation"),
            after=("curate-reduce",),
            files=_parcels,
            product=lambda c: c.layout.model(c.delineation.name) / "model.pt",
        ),
        Stage(
            "train",
            "srpipe.train:train",
            reads=("source.scale", "curate.n_frames", "model", "train", "loss"),
            after=("curate-reduce", "train-delineation"),
            files=_init_weights,
            restart=lambda c: c.layout.model(c.train.name),
            product=lambda c: c.layout.model(c.train.name) / "model.pt",
            mpi=True,
        ),
        Stage(
            "infer",
            "srpipe.infer:infer_tile",
            per_tile=True,
            reads=(
                "source.scale",
                "source.time_interval",
                "source.harmonize_values",
                "train.name",
                *(f"infer.{k}" for k in _INFER_OUTPUT_KEYS),
                "mosaic.blocksize",
                "mosaic.compress",
                "mosaic.min_overview_px",
            ),
            after=("download", "train"),
            files=_infer_weights,
            batch="srpipe.infer:infer_shard",
        ),
        Stage(
            "mosaic",
            "srpipe.mosaic:mosaic_unit",
            reads=(
                "plan.region",
                "train.name",
                "infer.model",
                "mosaic.blocksize",
                "mosaic.compress",
                "mosaic.min_overview_px",
                "mosaic.mask_aoi",
            ),
            after=("infer",),
            files=_aoi,
            units=_mosaic_units,
            reads_units=mosaic_reads,
        ),
        Stage(
            "catalog",
            "srpipe.mosaic:catalog",
            reads=("plan.region", "mosaic", "train.name", "infer.model", "source.name", "source.s2_collection"),
            after=("mosaic",),
            files=_infer_weights,  # the run's own model.pt reaches it through train's version, upstream
        ),
        Stage(
            "evaluate",
            "srpipe.evaluate:evaluate",
            reads=(
                "evaluate",
                "infer.self_ensemble",
                "loss.cpsnr_max_shift_px",
                "loss.crop_border_px",
                "train.name",
                "curate",
                "delineation",
            ),  # curate: the tile cores' stacks; delineation: the downstream test's reference
            after=("download", "curate-reduce", "train-delineation", "train"),
        ),
    )
}
CHAIN = tuple(STAGES)


def check_stage(name: str) -> Stage:
    """The stage called `name`, or a StageError listing the stages."""
    if name not in STAGES:
        raise StageError(f"unknown stage {name!r}; stages: {', '.join(CHAIN)}")
    return STAGES[name]


def stage_units(cfg: Config, stage: Stage, tiles: Iterable[str] | None = None) -> list[str]:
    """The units of `stage`: its own (`stage.units`), `tiles` (default: every tile of the grid) for a per-tile stage,
    else ['all']."""
    if stage.units is not None:  # tiles asked for (e.g. a resubmit of these units) pick among its own units
        own = stage.units(cfg)
        picked = [u for u in own if u in set(tiles or ())]
        return picked or own
    if not stage.per_tile:
        return [ALL]
    from srpipe.grid import read_grid

    return list(tiles) if tiles is not None else [t.tile_id for t in read_grid(cfg.run_path)]


# ---- fingerprints --------------------------------------------------------------------------------------------------


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def _config_tree(cfg: Config) -> dict[str, Any]:
    return config_to_dict(cfg)


def _config_values(cfg: Config, keys: tuple[str, ...]) -> dict[str, Any]:
    """{dotted key: value} of every key `keys` names (a section expands to its keys)."""
    tree, out = _config_tree(cfg), {}
    for key in keys:
        value: Any = tree
        for part in key.split("."):
            value = value[part]
        items = value.items() if isinstance(value, dict) else [("", value)]
        out |= {f"{key}.{k}" if k else key: v for k, v in items}
    return out


class Versions:
    """Recorded versions of the chain's units, read at most once each: one file per unit, or one listing per stage
    where every unit is needed (a whole-run stage's upstream tiles, status), never a listing per tile."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._listed: dict[str, dict[str, dict]] = {}
        self._single: dict[tuple[str, str], dict | None] = {}

    def records(self, stage: str) -> dict[str, dict]:
        """{unit: done record} of every finished unit of `stage` (one folder listing)."""
        if stage not in self._listed:
            self._listed[stage] = state.done_records(self.run_dir, stage)
        return self._listed[stage]

    def record(self, stage: str, unit: str) -> dict | None:
        """The done record of one unit (None when it is not done)."""
        if stage in self._listed:
            return self._listed[stage].get(unit)
        if (stage, unit) not in self._single:
            self._single[stage, unit] = state.done_info(self.run_dir, stage, unit) or None
        return self._single[stage, unit]


def read_units(stage: Stage, unit: str, upstream: str, versions: Versions) -> list[str] | None:
    """The units of stage `upstream` that `unit` of `stage` reads: one ([ALL], or the same tile), the finished ones
    `stage.reads_units` picks, or None for every finished one (a whole-run stage after a mapped one)."""
    other = STAGES[upstream]
    if not other.mapped:
        return [ALL]
    if stage.per_tile and other.per_tile:
        return [unit]
    if stage.reads_units is not None and stage.mapped:
        return stage.reads_units(unit, versions.records(upstream))
    return None


def _upstream(stage: Stage, unit: str, versions: Versions) -> dict[str, Any]:
    """{upstream stage: the version of the unit(s) this unit reads}; None where that unit is not done."""
    out = {}
    for name in stage.after:
        units = read_units(stage, unit, name, versions)
        if units is None:  # every finished unit
            out[name] = _digest({u: r.get("version") for u, r in versions.records(name).items()})
        elif units == [ALL] or (len(units) == 1 and stage.per_tile):
            out[name] = (versions.record(name, units[0]) or {}).get("version")
        else:
            out[name] = _digest({u: (versions.record(name, u) or {}).get("version") for u in units})
    return out


def inputs_of(cfg: Config, stage: Stage, unit: str, versions: Versions) -> dict[str, Any]:
    """What `unit` of `stage` reads now: config values, input files by content hash, upstream versions."""
    paths = stage.files(cfg) if stage.files else []
    files = {path: state.file_sha256(path) if Path(path).exists() else None for path in paths}
    return {"config": _config_values(cfg, stage.reads), "files": files, "upstream": _upstream(stage, unit, versions)}


def fingerprint(inputs: dict[str, Any]) -> str:
    """16 hex digits identifying `inputs`."""
    return _digest(inputs)


def stale_reason(recorded: dict[str, Any], now: dict[str, Any]) -> str:
    """Which input changed between a unit's recorded inputs and today's, in words."""
    reasons = []
    old_config, new_config = recorded.get("config", {}), now["config"]
    for key in sorted(set(old_config) | set(new_config)):
        if old_config.get(key) != new_config.get(key):
            reasons.append(f"{key} {old_config.get(key)!r} -> {new_config.get(key)!r}")
    reasons += [f"file {p} changed" for p in now["files"] if recorded.get("files", {}).get(p) != now["files"][p]]
    old_up = recorded.get("upstream", {})
    reasons += [f"{name} was redone" for name, v in now["upstream"].items() if old_up.get(name) != v]
    return "; ".join(reasons) or "recorded before fingerprints"


# ---- unit states ---------------------------------------------------------------------------------------------------


@dataclass
class UnitState:
    """One unit: `status` done | stale | failed | pending, and why (the changed input, or the error)."""

    status: str
    reason: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)


def unit_state(cfg: Config, stage: Stage, unit: str, versions: Versions) -> UnitState:
    """Whether `unit` of `stage` is done on today's inputs, stale (and why), failed or pending."""
    now = inputs_of(cfg, stage, unit, versions)
    record = versions.record(stage.name, unit)
    if record is not None:
        if record.get("inputs") == fingerprint(now):
            return UnitState("done", inputs=now)
        return UnitState("stale", stale_reason(record.get("inputs_detail", {}), now), now)
    failure = state.failure_record(cfg.run_path, stage.name, unit)
    if failure:
        return UnitState("failed", failure["error"], now)
    return UnitState("pending", inputs=now)


def upstream_problem(
    cfg: Config, stage: Stage, unit: str, versions: Versions, memo: dict[tuple[str, str], str] | None = None
) -> str:
    """Why `unit` cannot run on current inputs ('' when it can): a unit it reads, or one further up, is stale."""
    memo = {} if memo is None else memo
    for name in stage.after:
        upstream = STAGES[name]
        others = read_units(stage, unit, name, versions)
        others = list(versions.records(name)) if others is None else others
        for other in others:
            if versions.record(name, other) is None:
                continue  # missing upstream work fails inside the stage with its own clear error
            if (name, other) not in memo:
                current = unit_state(cfg, upstream, other, versions)
                where = f" of {'tile' if upstream.per_tile else 'unit'} {other}" if upstream.mapped else ""
                memo[name, other] = (
                    f"{name}{where} is stale ({current.reason}); run `srpipe {name}` first"
                    if current.status == "stale"
                    else upstream_problem(cfg, upstream, other, versions, memo)
                )
            if memo[name, other]:
                return memo[name, other]
    return ""


# ---- running units -------------------------------------------------------------------------------------------------


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
    return _digest([fp, state.file_sha256(product) if product.exists() else None])


@dataclass
class Pending:
    """A unit to run: what it reads now (`inputs`), or why it cannot run yet (`problem`: stale upstream work)."""

    unit: str
    inputs: dict[str, Any]
    problem: str = ""


def pending_units(cfg: Config, stage: Stage, units: list[str]) -> tuple[list[Pending], list[str]]:
    """(units not done on today's inputs, with their inputs; units current already); upstream read once for all."""
    versions = Versions(cfg.run_path)
    for name in (stage.name, *stage.after):  # every unit is checked: list each folder once, not a file per tile
        versions.records(name)
    memo: dict[tuple[str, str], str] = {}
    todo, current = [], []
    for unit in units:
        now = unit_state(cfg, stage, unit, versions)
        if now.status == "done":
            current.append(unit)
        else:
            todo.append(Pending(unit, now.inputs, upstream_problem(cfg, stage, unit, versions, memo)))
    return todo, current


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
        return _record(cfg, stage, pending, exc, rank, log_path)
    return _record(cfg, stage, pending, info, rank, log_path)


def _record(
    cfg: Config, stage: Stage, pending: Pending, result: dict | Exception, rank: int, log_path: str
) -> tuple[str, str | None]:
    """Record `pending`'s unit done (with its fingerprint and `result`'s info) or failed (`result` an exception)."""
    unit, fp = pending.unit, fingerprint(pending.inputs)
    if isinstance(result, Exception):
        message = f"{type(result).__name__}: {result}"
        trace = "".join(traceback.format_exception(result))
        if rank == 0:
            state.mark_failed(cfg.run_path, stage.name, unit, message, trace, log_path=log_path)
        else:
            state.write_json(cfg.layout.state(stage.name) / f"{unit}.rank{rank}.json", {"error": message})
        return unit, message
    if rank == 0:
        record = {**result, "inputs": fp, "version": _version(cfg, stage, fp), "inputs_detail": pending.inputs}
        state.mark_done(cfg.run_path, stage.name, unit, record)
    else:  # the other ranks' results beside rank 0's marker (e.g. their parameter checksums)
        state.write_json(cfg.layout.state(stage.name) / f"{unit}.rank{rank}.json", {**result, "error": None})
    return unit, None


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
        results.append(_record(cfg, stage, pending, outcome, 0, log_path))
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


# ---- the chain -----------------------------------------------------------------------------------------------------


class Executor(Protocol):
    """Where a stage's units run: in this process or a local pool (cluster.local), or as Slurm jobs (cluster.slurm)."""

    def run(self, cfg: Config, stage: Stage, units: list[str], after: StageSummary | None) -> StageSummary:
        """Run (or submit, after `after`'s jobs) the units of `stage`; return what happened."""
        ...


def run_chain(
    cfg: Config,
    stages: Iterable[str],
    units: list[str] | None,
    executor: Executor,
    report: Callable[[StageSummary], None] = lambda s: None,
) -> list[StageSummary]:
    """Run `stages` in order over `units` (default: every tile) with `executor`; stop after a failed whole-run stage."""
    summaries: list[StageSummary] = []
    previous = None
    for name in stages:
        stage = check_stage(name)
        previous = executor.run(cfg, stage, stage_units(cfg, stage, units), previous)
        summaries.append(previous)
        report(previous)
        if previous.stopped:
            break
    return summaries


def plan_run(cfg: Config) -> StageSummary:
    """Plan the run (always re-checked: cheap, and it guards the grid against a changed config)."""
    from srpipe.grid import plan

    start, summary = time.perf_counter(), StageSummary("plan")
    try:
        state.mark_done(cfg.run_path, "plan", ALL, plan(cfg))
        summary.done.append(ALL)
    except Exception as exc:  # noqa: BLE001 - reported like every stage's failure
        summary.failed[ALL] = f"{type(exc).__name__}: {exc}"
        state.mark_failed(cfg.run_path, "plan", ALL, summary.failed[ALL], traceback.format_exc())
    summary.seconds = time.perf_counter() - start
    return summary
