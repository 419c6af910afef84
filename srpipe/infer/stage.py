"""Infer, a shard of tiles: rolling windows of cloudless S2 frames -> SR images as S2-DN COGs on the tiles' label grid.

The shard loads the model once. A DataLoader's workers read and normalise the next tiles (`infer.windows`) while the
model runs full batches of windows (any tile, any date); a writer thread converts finished images to DN and writes
the COGs. Outputs: `predictions/<model>/<tile>/<date>.tif` (uint16 DN, quantification 10000, nodata 0, the input's
radiometric offset; or float32 with NaN nodata) and with `infer.uncertainty` `<date>.std.tif`: the self-ensemble's
eight views' per-pixel std, float32 in the SR's own (reflectance-like, not DN) units, NaN nodata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import os
import queue
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from rasterio.transform import from_bounds

from srpipe import state, twin_bands
from srpipe.config import Config, InferConfig, SourceConfig
from srpipe.data.cog import write_cog
from srpipe.data.s2units import QUANTIFICATION_VALUE, to_dn
from srpipe.errors import StageError, TileError
from srpipe.infer.fitted_scale import data_scale, fitted
from srpipe.infer.record import InferRecord
from srpipe.infer.windows import TileFailure, TileWindows, tile_loader
from srpipe.models.highresnet import Constrained
from srpipe.models.trained import TrainedModel, ensemble_mean_std, load_for_inference
from srpipe.sources import make_source

CPU_CHANNELS_LAST = True  # benchmarks/infer_throughput.py: oneDNN's convolutions run ~1.3x faster channels-last
STAGE_CLOCKS = ("read", "normalise", "wait", "gather", "model", "queue", "write", "tail")


def infer_tile(cfg: Config, tile_id: str) -> dict:
    """Super-resolve one tile (a shard of one); return its done-record info, or raise its TileError."""
    with contextlib.closing(infer_shard(cfg, [tile_id])) as results:
        for _, outcome in results:
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
    raise StageError(f"infer_shard returned no result for tile {tile_id}")


def infer_shard(
    cfg: Config, tile_ids: list[str], timing_s: dict[str, float] | None = None
) -> Iterator[tuple[str, dict | Exception]]:
    """Super-resolve a shard's tiles in full model batches; yield (tile, info) as each tile's COGs are written, or
    (tile, TileError) for a tile that failed (the others go on).

    info: "epsg", "dates" (ISO dates written), "frames" {date: the ISO frame dates used}, "skipped" {date: reason},
    "offset_dn" {date: DN offset}, "timing_s" (this tile's read, normalise, model and write seconds). `timing_s`,
    when given, is filled with the shard's seconds per part (`STAGE_CLOCKS`; read/normalise/write run beside the
    model, the others are the main thread's) and "wall", "windows" and "lr_pixels" (LR pixels of the windows run).
    """
    clock = timing_s if timing_s is not None else {}
    clock.update(dict.fromkeys((*STAGE_CLOCKS, "wall", "windows", "lr_pixels"), 0.0))
    start = time.perf_counter()
    model = load_for_inference(cfg)
    if cfg.infer.normalisation == "data":
        model = fitted(model, data_scale(cfg))
    forward = _Forward(model, cfg.infer)
    batches = _Batches(forward, cfg.infer.batch_size, clock)
    loader = iter(tile_loader(cfg, list(tile_ids), model.lr_scale, model.n_frames))  # workers fork before threads
    writer = _Writer(cfg, model, clock)
    try:
        while True:
            t0 = time.perf_counter()
            item = next(loader, None)
            clock["wait"] += time.perf_counter() - t0
            if item is None:
                break
            if isinstance(item, TileFailure):
                yield item.tile_id, TileError(item.tile_id, item.message)
                continue
            clock["read"] += item.timing_s["read"]
            clock["normalise"] += item.timing_s["normalise"]
            writer.submit(batches.add(_Job(item)))
            yield from writer.finished()
        writer.submit(batches.flush())
        t0 = time.perf_counter()
        writer.close()
        clock["tail"] += time.perf_counter() - t0
        yield from writer.finished()
    except Exception:
        writer.close()  # tiles already written are recorded before the shard's error fails the rest
        yield from writer.finished()
        raise
    finally:
        writer.close()
        clock["wall"] = time.perf_counter() - start


@dataclasses.dataclass
class _Job:
    """A tile in flight: its windows, how many are still to write, its seconds, its first write error."""

    windows: TileWindows
    remaining: int = 0
    seconds: dict[str, float] = dataclasses.field(default_factory=lambda: {"model": 0.0, "write": 0.0})
    offsets: dict[str, int] = dataclasses.field(default_factory=dict)
    error: Exception | None = None

    def __post_init__(self) -> None:
        self.remaining = len(self.windows.dates)
        self.seconds = {**self.windows.timing_s, **self.seconds}


def _device(settings: InferConfig) -> torch.device:
    """`infer.device` resolved: "auto" = CUDA when visible, else CPU; StageError for "cuda" without one."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise StageError("infer.device = 'cuda' but no CUDA device is visible; set infer.device = 'auto' or 'cpu'")
    return torch.device("cuda" if settings.device != "cpu" and torch.cuda.is_available() else "cpu")


class _Forward:
    """The model's batch forward, prepared once per shard: device, threads, memory format, autocast, compile."""

    def __init__(self, model: TrainedModel, settings: InferConfig) -> None:
        if settings.writes_twin and not settings.self_ensemble:
            raise StageError(
                "infer.uncertainty and infer.interval need infer.self_ensemble = true (the std is over its eight views)"
            )
        if settings.interval_levels and model.calibration is None:
            raise StageError(
                f"infer.interval = {settings.interval}: the model ({settings.model or 'this run'}'s) has no interval "
                "calibration (trained before srpipe calibrated, or on a run without validation tiles); retrain it "
                "with `srpipe train` on a run with >= 3 tiles (its validation split calibrates it), or set "
                "infer.interval = 0"
            )
        self.model, self.settings, self.device = model, settings, _device(settings)
        self.cuda = self.device.type == "cuda"
        torch.set_num_threads(settings.threads or len(os.sched_getaffinity(0)))
        net = Constrained(model.net, model.constraint).to(self.device).eval()
        if self.cuda or CPU_CHANNELS_LAST:
            net = net.to(memory_format=torch.channels_last)
        self.eager = net
        self.net = torch.compile(net, dynamic=False) if settings.compile else net

    def _net(self, lr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        try:
            return self.net(lr, mask).float()
        except Exception as exc:
            if self.net is self.eager:
                raise
            # e.g. torch 2.13's inductor fails on this net on CPU ("vr must not be None"): eager still runs
            warnings.warn(f"infer.compile: torch.compile failed ({type(exc).__name__}); running eager", stacklevel=2)
            self.net = self.eager
            return self.net(lr, mask).float()

    def _twin(self, std: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) label-scaled views' std -> (B, 4 (1 + levels), H, W) label units: the std, then each
        `infer.interval` level's calibrated half-width (`srpipe.twin_bands`)."""
        parts = [std] + [
            torch.from_numpy(self.model.calibration.half_width(std.numpy(), level))
            for level in self.settings.interval_levels
        ]
        return torch.cat([self.model.label_std(part) for part in parts], dim=1)

    def __call__(self, lr: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, K, 4, h, w) LR-scaled frames, (B, K, h, w) masks (CPU) -> (B, 4, s*h, s*w) label-scaled SR (floored
        at label value 0) and, with `infer.uncertainty` or `infer.interval`, the `_twin` (else None), float32, CPU."""
        b, size = lr.shape[0], self.settings.batch_size
        if self.settings.compile and b < size:  # a compiled net sees one batch shape: pad the ragged last batch
            lr = torch.cat([lr, lr.new_zeros(size - b, *lr.shape[1:])])
            mask = torch.cat([mask, mask.new_zeros(size - b, *mask.shape[1:])])
        lr, mask = lr.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda)
        std = None
        with torch.inference_mode(), autocast:
            if self.settings.self_ensemble:
                sr, std = ensemble_mean_std(self._net, lr, mask)
                std = self._twin(std[:b].float().cpu()) if self.settings.writes_twin else None
            else:
                sr = self._net(lr, mask)
        return self.model.floor(sr[:b].float()).cpu(), std


class _Batches:
    """Windows waiting for the model, by LR shape; a full batch (`batch_size` windows, any tiles) runs at once."""

    def __init__(self, forward: _Forward, batch_size: int, clock: dict[str, float]) -> None:
        self.forward, self.size, self.clock = forward, batch_size, clock
        self.waiting: dict[tuple[int, int], list[tuple[_Job, int]]] = defaultdict(list)

    def add(self, job: _Job) -> list:
        """Queue `job`'s windows; run every full batch; return the finished (job, window, sr, std) results."""
        shape = tuple(job.windows.frames.shape[-2:])
        self.waiting[shape].extend((job, j) for j in range(len(job.windows.dates)))
        done = []
        while len(self.waiting[shape]) >= self.size:
            done += self._run(self.waiting[shape][: self.size])
            self.waiting[shape] = self.waiting[shape][self.size :]
        return done

    def flush(self) -> list:
        """Run what is left (ragged batches); return their results."""
        done = []
        for shape in list(self.waiting):
            for i in range(0, len(self.waiting[shape]), self.size):
                done += self._run(self.waiting[shape][i : i + self.size])
        self.waiting.clear()
        return done

    def _run(self, items: list[tuple[_Job, int]]) -> list:
        """One forward over `items` (same LR shape): gather their frames into a (B, K, 4, h, w) batch and run it."""
        t0 = time.perf_counter()
        first = items[0][0].windows
        k, (_, c, h, w) = first.index.shape[1], first.frames.shape
        lr = torch.zeros(len(items), k, c, h, w, pin_memory=self.forward.cuda)
        mask = torch.zeros(len(items), k, h, w, dtype=torch.bool, pin_memory=self.forward.cuda)
        for i, (job, j) in enumerate(items):
            rows = job.windows.index[j]
            rows = rows[rows >= 0]
            lr[i, : len(rows)] = job.windows.frames[rows]
            mask[i, : len(rows)] = job.windows.clear[rows]
        t1 = time.perf_counter()
        sr, std = self.forward(lr, mask)
        t2 = time.perf_counter()
        self.clock["gather"] += t1 - t0
        self.clock["model"] += t2 - t1
        self.clock["windows"] += len(items)
        self.clock["lr_pixels"] += len(items) * h * w
        for job, _ in items:
            job.seconds["model"] += (t2 - t1) / len(items)
        return [(job, j, sr[i].numpy(), None if std is None else std[i].numpy()) for i, (job, j) in enumerate(items)]


class _Writer:
    """A thread writing finished windows' COGs from a bounded queue; `finished()` hands back the tiles all written."""

    def __init__(self, cfg: Config, model: TrainedModel, clock: dict[str, float]) -> None:
        self.cfg, self.model, self.clock = cfg, model, clock
        self.todo: queue.Queue = queue.Queue(maxsize=2 * cfg.infer.batch_size)
        self.done: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="infer-writer", daemon=True)
        self.thread.start()

    def submit(self, results: list) -> None:
        """Queue (job, window, sr, std) results for writing (blocks while the queue is full: the writer is behind)."""
        t0 = time.perf_counter()
        for result in results:
            self.todo.put(result)
        self.clock["queue"] += time.perf_counter() - t0

    def close(self) -> None:
        """Write what is queued and stop the thread (idempotent)."""
        if self.thread.is_alive():
            self.todo.put(None)
            self.thread.join()

    def finished(self) -> Iterator[tuple[str, dict | Exception]]:
        """The tiles whose windows are all written since the last call: (tile, info) or (tile, TileError)."""
        while True:
            try:
                yield self.done.get_nowait()
            except queue.Empty:
                return

    def _loop(self) -> None:
        while (result := self.todo.get()) is not None:
            job = result[0]
            t0 = time.perf_counter()
            if job.error is None:
                try:
                    _write_window(self.cfg, self.model, *result)
                except Exception as exc:  # noqa: BLE001 - a tile that cannot be written fails alone
                    job.error = TileError(job.windows.tile_id, f"writing its COG failed ({type(exc).__name__}: {exc})")
            seconds = time.perf_counter() - t0
            job.seconds["write"] += seconds
            self.clock["write"] += seconds
            job.remaining -= 1
            if job.remaining == 0:
                self.done.put((job.windows.tile_id, job.error or _info(self.cfg, job)))


def _info(cfg: Config, job: _Job) -> dict:
    """A finished tile's done-record info (see `infer_shard`)."""
    w = job.windows
    return InferRecord(
        tile_id=w.tile_id,
        epsg=w.epsg,
        dates=tuple(w.dates),
        frames=dict(zip(w.dates, w.used, strict=True)),
        offset_dn=dict(job.offsets),
        skipped=dict(w.skipped),
        model=cfg.prediction_model,
        output_dtype=cfg.infer.output_dtype,
        timing_s={k: round(v, 4) for k, v in job.seconds.items()},
        sha256=_digests(cfg, w.tile_id, w.dates),
    ).info()


def _digests(cfg: Config, tile_id: str, dates: list[str]) -> dict[str, str]:
    """{file name: SHA-256} of the tile's prediction COGs (and spread twins) written for `dates`."""
    model, layout = cfg.prediction_model, cfg.layout
    paths = [p(model, tile_id, d) for d in dates for p in (layout.prediction, layout.prediction_std)]
    return {p.name: state.file_sha256(p) for p in paths if p.exists()}


@functools.lru_cache(maxsize=64)
def _radiometric_offset(source: SourceConfig, run_dir: Path, date: str) -> tuple[int, str]:
    """(DN offset, why) of the source's values on ISO `date`: asked once per source and date in a process."""
    return make_source(source, run_dir).radiometric_offset(dt.date.fromisoformat(date))


TWIN_CONTENT = "std of the 8 self-ensemble views, then calibrated interval half-widths (interval_levels), label units"


def interval_tags(model: TrainedModel, settings: InferConfig) -> dict[str, str]:
    """The twin's tags on its intervals: the levels and the calibration they came from (none without levels)."""
    if not settings.interval_levels:
        return {}
    cal = model.calibration
    source = f"split conformal on {cal.pixels} {cal.split} pixels of {cal.samples} samples, {len(cal.tiles)} tiles"
    return {"interval_levels": ",".join(f"{x:.2f}" for x in settings.interval_levels), "interval_calibration": source}


def _write_window(cfg: Config, model: TrainedModel, job: _Job, j: int, sr: np.ndarray, std: np.ndarray | None) -> None:
    """Write window `j` of `job`: (4, H, W) label-scaled `sr` -> label units, nodata where no frame saw the pixel,
    as DN (or float32); `std` (4, H, W, label units) beside it when given."""
    w, date = job.windows, job.windows.dates[j]
    rows = w.index[j][w.index[j] >= 0]
    hole = ~np.kron(w.seen[rows].any(0).numpy(), np.ones((model.scale, model.scale), bool))
    image = model.hr_scale.invert(sr, band_axis=0)
    image[:, hole] = np.nan
    offset, origin = _radiometric_offset(cfg.source, cfg.run_path, date)
    job.offsets[date] = offset
    transform = from_bounds(*w.bounds, width=image.shape[2], height=image.shape[1])
    tags = {
        "tile_id": w.tile_id,
        "as_of": date,
        "frames": ",".join(w.used[j]),
        "model": cfg.prediction_model,
        "quantification_value": QUANTIFICATION_VALUE if cfg.infer.output_dtype == "uint16" else 1,
        "radiometric_offset_dn": offset,
        "offset_origin": origin,
    }
    out = to_dn(image) if cfg.infer.output_dtype == "uint16" else image
    write_cog(
        cfg.layout.prediction(cfg.prediction_model, w.tile_id, date), out, transform, w.epsg, cfg.mosaic, tags, offset
    )
    if std is not None:
        std = std.astype(np.float32, copy=True)
        std[:, hole] = np.nan
        tags = {**tags, "quantification_value": 1, "content": TWIN_CONTENT, **interval_tags(model, cfg.infer)}
        path = cfg.layout.prediction_std(cfg.prediction_model, w.tile_id, date)
        write_cog(path, std, transform, w.epsg, cfg.mosaic, tags, descriptions=twin_bands(cfg.infer.interval_levels))
