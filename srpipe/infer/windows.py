"""Infer's input side: one tile's S2 series -> its rolling windows, normalised for the model (a torch Dataset).

Every output date gets the K most recent cloudless frames on or before it. A tile's item holds each frame any of its
windows uses once, with an index table per window, so K-fold overlapping windows are not copied before batching.
"""

from __future__ import annotations

import datetime as dt
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import torch

from srpipe.config import Config, InferConfig
from srpipe.data.clouds import clear_frames, cloud_cover
from srpipe.data.grid import tiles_by_id
from srpipe.data.normalise import BandScale
from srpipe.errors import TileError
from srpipe.sources import make_source


@dataclass
class TileWindows:
    """One tile's windows: U distinct frames and, per output date, which of them it stacks.

    `frames` (U, 4, h, w) float32 LR-scaled (not clipped to [0, 1]: the model clips), 0 where not seen; `clear`
    (U, h, w) bool, the mask the model gets (seen and not cloudy); `seen` (U, h, w) bool, data there (valid and
    finite); `index` (N, K) int64 rows of `frames` per window, -1 = a padded frame; `dates` N ISO output dates; `used`
    N lists of the ISO frame dates.
    """

    tile_id: str
    frames: torch.Tensor
    clear: torch.Tensor
    seen: torch.Tensor
    index: torch.Tensor
    dates: list[str]
    used: list[list[str]]
    skipped: dict[str, str]
    epsg: int
    bounds: tuple[float, float, float, float]
    timing_s: dict[str, float] = field(default_factory=dict)


@dataclass
class TileFailure:
    """A tile that could not be read: its message (the TileError's text without the tile prefix), picklable."""

    tile_id: str
    message: str


def output_dates(dates: list[dt.date], usable: np.ndarray, wanted: str | tuple[str, ...], as_of: dt.date) -> list:
    """The dates to write: [`as_of`] for "latest", every usable (cloudless) frame date on or before it for "all",
    else the listed dates (each "as of" that date, like "latest"); sorted, distinct."""
    if wanted == "latest":
        return [as_of]
    if wanted == "all":
        return sorted({d for d, ok in zip(dates, usable, strict=True) if ok and d <= as_of})
    return sorted({dt.date.fromisoformat(d) for d in wanted})


def window(dates: list[dt.date], usable: np.ndarray, until: dt.date, k: int) -> np.ndarray:
    """Indices (oldest first) of the `k` most recent usable frames dated on or before `until`."""
    on_or_before = usable & np.array([d <= until for d in dates], bool)
    return np.flatnonzero(on_or_before)[-k:] if k > 0 else np.zeros(0, int)


def _skip_reason(n: int, until: dt.date, settings: InferConfig) -> str:
    """Why a date has no output: too few cloudless frames up to it, and the settings that would change that."""
    if n == 0:
        return (
            f"no S2 frame on or before {until} has cloud cover <= infer.max_cloud_cover={settings.max_cloud_cover}; "
            "set infer.date later or raise the threshold"
        )
    return (
        f"{n} cloudless S2 frame(s) on or before {until}, fewer than infer.min_frames={settings.min_frames}; "
        "lower infer.min_frames or raise infer.max_cloud_cover"
    )


def tile_windows(cfg: Config, tile_id: str, lr_scale: BandScale, k: int) -> TileWindows:
    """Read one tile's S2 series and build its windows (see `TileWindows`); `k` frames per window (the model's K).

    NaN/inf values count as not seen even where the source's `valid` says True; they are set to 0 and masked.
    TileError when no date gets an output.
    """
    t0 = time.perf_counter()
    stack = make_source(cfg.source, cfg.run_path).s2_stack(tiles_by_id(cfg.run_path)[tile_id])
    t1 = time.perf_counter()
    settings = cfg.infer
    usable = clear_frames(cloud_cover(stack.clouds, stack.valid), stack.valid, settings.max_cloud_cover)
    picks, out, skipped = [], [], {}
    for date in output_dates(stack.dates, usable, settings.dates, cfg.as_of_date):
        idx = window(stack.dates, usable, date, min(settings.n_frames, k))
        if idx.size < settings.min_frames:
            skipped[date.isoformat()] = _skip_reason(idx.size, date, settings)
        else:
            picks.append(idx)
            out.append(date.isoformat())
    if not out:
        reasons = "; ".join(f"{d}: {r}" for d, r in skipped.items())
        raise TileError(tile_id, reasons or _skip_reason(0, cfg.as_of_date, settings))
    distinct = np.unique(np.concatenate(picks))
    s2 = stack.s2[distinct]
    seen = stack.valid[distinct] & np.isfinite(s2).all(-1)
    frames = np.where(seen[..., None], lr_scale.apply(np.where(seen[..., None], s2, 0), band_axis=3, clip=False), 0)
    index = np.full((len(out), k), -1, np.int64)
    for row, idx in enumerate(picks):
        index[row, : idx.size] = np.searchsorted(distinct, idx)
    return TileWindows(
        tile_id,
        torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))),
        torch.from_numpy(seen & ~stack.clouds[distinct]),
        torch.from_numpy(seen),
        torch.from_numpy(index),
        out,
        [[stack.dates[i].isoformat() for i in idx] for idx in picks],
        skipped,
        stack.epsg,
        stack.bounds,
        {"read": t1 - t0, "normalise": time.perf_counter() - t1},
    )


class TileDataset(torch.utils.data.Dataset):
    """The shard's tiles, item i = `tile_windows` of tile i, or a TileFailure when it cannot be read."""

    def __init__(self, cfg: Config, tile_ids: list[str], lr_scale: BandScale, k: int) -> None:
        self.cfg, self.tile_ids, self.lr_scale, self.k = cfg, tile_ids, lr_scale, k

    def __len__(self) -> int:
        return len(self.tile_ids)

    def __getitem__(self, i: int) -> TileWindows | TileFailure:
        tile_id = self.tile_ids[i]
        try:
            return tile_windows(self.cfg, tile_id, self.lr_scale, self.k)
        except TileError as exc:  # sent back as text: TileError's (tile, message) signature does not unpickle
            return TileFailure(tile_id, str(exc).removeprefix(f"tile {tile_id}: "))
        except Exception as exc:  # noqa: BLE001 - one unreadable tile must not stop the shard
            where = traceback.extract_tb(exc.__traceback__)[-1]
            return TileFailure(
                tile_id,
                f"reading its S2 series failed ({type(exc).__name__}: {exc}, at {where.filename}:{where.lineno}); "
                "check the tile's download (re-run `srpipe download` for it)",
            )


def _one_thread(worker_id: int) -> None:
    """DataLoader worker init: one torch thread each, the model's threads keep the cores."""
    torch.set_num_threads(1)


def _as_is(item: TileWindows | TileFailure) -> TileWindows | TileFailure:
    return item


def tile_loader(cfg: Config, tile_ids: list[str], lr_scale: BandScale, k: int) -> torch.utils.data.DataLoader:
    """A DataLoader over the shard's tiles in order: `infer.loader_workers` processes read ahead of the model."""
    workers = min(cfg.infer.loader_workers, len(tile_ids))
    return torch.utils.data.DataLoader(
        TileDataset(cfg, tile_ids, lr_scale, k),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_is,
        worker_init_fn=_one_thread if workers else None,
        prefetch_factor=2 if workers else None,
    )
