"""The stage registry: each stage's function (a lazy "module:function" target), its units, what it reads, the order.

The registry imports no stage code (and so no torch): a target is imported only when its unit runs.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from srpipe import state
from srpipe.config import CONSTRAINT_KEYS, Config
from srpipe.errors import StageError

ALL = "all"  # the one unit of a whole-run stage
Records = Callable[[str], dict[str, dict]]  # stage name -> {unit: done record}


def _load(target: str) -> Callable:
    """The function a "module:function" string names."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Stage:
    """A stage: `target` ("module:function") over grid tiles (`per_tile`) or once per run, and what it reads."""

    name: str
    target: str
    per_tile: bool = False
    reads: tuple[str, ...] = ()  # config sections ("curate") or keys ("source.scale") it reads: its fingerprint
    speed_only: tuple[str, ...] = ()  # keys it reads that change only its speed or where it runs, never its outputs:
    # left out of the fingerprint (tests/chain/test_registry.py: a stage reads no key outside reads and speed_only)
    after: tuple[str, ...] = ()  # upstream stages whose outputs it reads
    files: Callable[[Config], list[str]] | None = None  # input files outside the run, hashed by content
    restart: Callable[[Config], Path] | None = None  # resumable state: set aside when the inputs change
    product: Callable[[Config], Path] | None = None  # the output file whose content hash downstream units read
    mpi: bool = False  # runs on every rank of an MPI job (the others: rank 0 only)
    units: str = ""  # "module:function" fn(cfg, records) -> its own units (e.g. mosaic's zone x date), not tiles
    reads_units: str = ""  # "module:function" fn(unit, upstream done records) -> the upstream units it reads
    batch: str = ""  # "module:function" running a whole shard of units: fn(cfg, units) -> iter (unit, info | error)
    needs_labels: bool = False  # reads the source's labels: left out of the chain of a source without them

    @property
    def mapped(self) -> bool:
        """True when the stage runs once per unit (tiles, or its own units), so arrays and ranks share it out."""
        return self.per_tile or bool(self.units)

    def function(self) -> Callable[..., dict]:
        """The stage function: fn(cfg, unit) for a mapped stage, fn(cfg) for a whole-run one."""
        return _load(self.target)

    def batch_function(self) -> Callable[[Config, list[str]], Iterator[tuple[str, dict | Exception]]]:
        """The shard function (`batch`): one call runs many units, loading what they share once."""
        return _load(self.batch)

    def own_units(self, cfg: Config, records: Records) -> list[str]:
        """The stage's own units (`units`), e.g. mosaic's zone x date; `records(stage)`: its done records."""
        return _load(self.units)(cfg, records)

    def picks(self, unit: str, records: dict[str, dict]) -> list[str]:
        """The upstream units `unit` reads among the finished ones (`records`: {unit: done record})."""
        return _load(self.reads_units)(unit, records)


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


def _scene(cfg: Config) -> list[str]:
    """The files of `source.scene` (a folder of band GeoTIFFs, or one file) when set: a scene replaced at the same
    path is then a changed input, not the same one."""
    if not cfg.source.scene:
        return []
    scene = Path(cfg.source.scene)
    return sorted(str(p) for p in scene.rglob("*") if p.is_file()) if scene.is_dir() else [str(scene)]


def _aoi(cfg: Config) -> list[str]:
    return [cfg.plan.aoi] if cfg.mosaic.mask_aoi and cfg.plan.aoi else []


_WHERE = ("run_dir",)  # every stage's run folder: where it reads and writes, not what it writes

# what infer's outputs depend on; batch_size, loader_workers, threads, device and compile only change its speed
_INFER_SPEED_KEYS = tuple(f"infer.{k}" for k in ("batch_size", "loader_workers", "threads", "device", "compile"))
_INFER_OUTPUT_KEYS = (
    "n_frames",
    "date",
    "dates",
    "min_frames",
    "max_cloud_cover",
    "self_ensemble",
    "uncertainty",
    "interval",
    "output_dtype",
    "normalisation",
    "model",
)

_CURATE_MAP_KEYS = tuple(
    f"curate.{k}"
    for k in (
        "vhr_cloud_threshold",
        "vhr_cloud_whiteness",
        "vhr_cloud_persistent_is_surface",
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
        Stage(
            "download",
            "srpipe.download:download_tile",
            per_tile=True,
            reads=("source",),
            speed_only=_WHERE,
            files=_scene,  # source.scene by content
        ),
        Stage(
            "curate",
            "srpipe.curate.tile:curate_tile",
            per_tile=True,
            reads=("source.scale", "source.seed", *_CURATE_MAP_KEYS),
            speed_only=_WHERE,
            after=("download",),
            needs_labels=True,
        ),
        Stage(
            "curate-reduce",
            "srpipe.curate.reduce:curate_reduce",
            reads=("source.scale", "source.seed", "source.lr_resolution_m", "curate", "train.seed"),
            speed_only=_WHERE,
            after=("curate",),
            needs_labels=True,
        ),
        Stage(
            "train-delineation",
            "srpipe.training.train_delineation:train_delineation",
            reads=("source.scale", "curate.lr_patch_px", "delineation"),
            speed_only=_WHERE,
            after=("curate-reduce",),
            files=_parcels,
            product=lambda c: c.layout.model(c.delineation.name) / "model.pt",
            needs_labels=True,
        ),
        Stage(
            "train",
            "srpipe.training.train:train",
            reads=("source.scale", "curate.n_frames", "model", "train", "loss", "delineation.name"),
            speed_only=_WHERE,  # delineation.name: the frozen net of its perceptual loss
            after=("curate-reduce", "train-delineation"),
            files=_init_weights,
            restart=lambda c: c.layout.model(c.train.name),
            product=lambda c: c.layout.model(c.train.name) / "model.pt",
            mpi=True,
            needs_labels=True,
        ),
        Stage(
            "infer",
            "srpipe.infer.stage:infer_tile",
            per_tile=True,
            reads=(
                "source",  # its S2 stacks come from the source, and the synthetic one makes them here (seed, dates)
                "train.name",
                *CONSTRAINT_KEYS,  # the constraint has no weights: the run's applies (models/trained.py)
                *(f"infer.{k}" for k in _INFER_OUTPUT_KEYS),
                "curate.percentiles",  # infer.normalisation = "data" fits them to the data
                "mosaic.blocksize",
                "mosaic.compress",
                "mosaic.min_overview_px",
            ),
            speed_only=(*_WHERE, *_INFER_SPEED_KEYS),
            after=("download", "train"),
            files=_infer_weights,
            batch="srpipe.infer.stage:infer_shard",
        ),
        Stage(
            "mosaic",
            "srpipe.mosaic.stage:mosaic_unit",
            reads=(
                "plan.region",
                "plan.aoi",  # the mask's file; `files` hashes its content
                "train.name",
                "infer.model",
                "infer.uncertainty",  # also mosaics the spread (`<date>.std.tif`)
                "infer.interval",  # and the half-widths in it
                "mosaic.blocksize",
                "mosaic.compress",
                "mosaic.min_overview_px",
                "mosaic.mask_aoi",
            ),
            speed_only=_WHERE,
            after=("infer",),
            files=_aoi,
            units="srpipe.mosaic.units:mosaic_units",
            reads_units="srpipe.mosaic.units:mosaic_reads",
        ),
        Stage(
            "catalog",
            "srpipe.mosaic.catalog:catalog",
            reads=(
                "plan.region",
                "mosaic",
                "train.name",
                "infer.model",
                "infer.interval",  # the twins' band names
                "source.name",
                "source.s2_collection",
            ),
            speed_only=_WHERE,
            after=("mosaic",),
            files=_infer_weights,  # the run's own model.pt reaches it through train's version, upstream
        ),
        Stage(
            "evaluate",
            "srpipe.evaluation.stage:evaluate",
            reads=(
                "evaluate",
                *CONSTRAINT_KEYS,
                "infer.self_ensemble",
                "loss.cpsnr_max_shift_px",
                "loss.crop_border_px",
                "train.name",
                "train.init_from",  # named in the report
                "plan.region",  # the report's title
                "source.scale",  # the tiles' label pixels (evaluation/tiles.py)
                "curate",
                "delineation",
            ),  # curate: the tile cores' stacks; delineation: the downstream test's reference
            speed_only=_WHERE,
            after=("download", "curate-reduce", "train-delineation", "train"),
            needs_labels=True,
        ),
    )
}
CHAIN = tuple(STAGES)
# plan makes the units the chain runs over, so it runs first, in this process, every time: see docs/layout.md
PLAN = Stage("plan", "srpipe.plan.stage:plan", reads=("plan", "source"), speed_only=_WHERE)


def downstream_of(name: str) -> set[str]:
    """The stages that read `name`'s outputs, directly or further down."""
    found: set[str] = set()
    for other in CHAIN[CHAIN.index(name) + 1 :]:
        if name in STAGES[other].after or found & set(STAGES[other].after):
            found.add(other)
    return found


def check_stage(name: str) -> Stage:
    """The stage called `name`, or a StageError listing the stages."""
    if name not in STAGES:
        raise StageError(f"unknown stage {name!r}; stages: {', '.join(CHAIN)}")
    return STAGES[name]


def stage_units(
    cfg: Config, stage: Stage, tiles: Iterable[str] | None = None, records: Records | None = None
) -> list[str]:
    """The units of `stage`: its own (`stage.units`, from `records(stage)`: done records, default read from disk),
    `tiles` (default: every tile of the grid) for a per-tile stage, else ['all']."""
    if stage.units:  # tiles asked for (e.g. a resubmit of these units) pick among its own units
        own = stage.own_units(cfg, records or functools.partial(state.done_records, cfg.run_path))
        picked = [u for u in own if u in set(tiles or ())]
        return picked or own
    if not stage.per_tile:
        return [ALL]
    from srpipe.data.grid import read_grid

    return list(tiles) if tiles is not None else [t.tile_id for t in read_grid(cfg.run_path)]
