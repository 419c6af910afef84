"""Curate reduce, one per run: shadow and noise filters, region factors, percentiles, HDF5 shards, plots, report.

Everything here reads the map's outputs (`curation/tiles/<tile>.{json,h5}`, shards.TILE_FIELDS) and the grid and
writes the shards (shards.SHARD_FIELDS); changing a filter's threshold re-runs only this step. Normalised units: S2
and matched labels are divided by their region's S2 factors, unmatched labels by their tile's label medians; then
per-band percentiles of the training tiles map them to [0, 1].
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from srpipe import BANDS, state
from srpipe.config import Config
from srpipe.curate import filter_plots as plots
from srpipe.curate.filter_report import write_report
from srpipe.curate.quality import SCORE_NAMES, passes_noise_filter
from srpipe.curate.shadows import shadow_flags
from srpipe.data.grid import Tile, read_grid
from srpipe.data.normalise import BandScale, fold_factors, percentile_scale, region_factors
from srpipe.data.shards import SHARD_FIELDS, TILE_FIELDS, ShardWriter
from srpipe.errors import StageError

SPLITS = ("train", "val", "test")
SAMPLE_COLUMNS = (
    "tile_id",
    "region",
    "split",
    "hr_date",
    "ref_date",
    "y",
    "x",
    *SCORE_NAMES,
    "shadow",
    "noisy",
    "kept",
)
_SHARD_KEYS_FROM_TILE = tuple(k for k in SHARD_FIELDS if k in TILE_FIELDS)  # shard fields copied from the map's


def split_tiles(tile_ids: list[str], shares: tuple[float, float, float], seed: int) -> dict[str, str]:
    """{tile_id: split}: a seeded split by tile (never by sample); each split gets a tile when there are 3 or more."""
    order = [tile_ids[i] for i in np.random.default_rng(seed).permutation(len(tile_ids))]
    n = len(order)
    n_val, n_test = round(shares[1] * n), round(shares[2] * n)
    if n >= 3:
        n_val, n_test = max(n_val, 1 if shares[1] else 0), max(n_test, 1 if shares[2] else 0)
    n_train = n - n_val - n_test
    names = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    return dict(zip(order, names, strict=True))


def read_samples(path: str | Path) -> list[dict]:
    """Rows of `curation/samples.csv`: every generated sample with its scores and filter decisions."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _decide(cfg: Config, per_tile: dict[str, dict], grid: dict[str, Tile], split: dict[str, str], flags: dict) -> list:
    """One row per generated sample: its provenance, scores, shadow flag, noise verdict and whether it is kept."""
    curate = cfg.curate
    rows = []
    for tile_id, stats in per_tile.items():
        samples = stats["samples"]
        if not samples:
            continue
        scores = np.array([[sample[name] for name in SCORE_NAMES] for sample in samples], np.float32)
        clean = passes_noise_filter(scores, curate.noise_min_ssim, curate.noise_min_psnr_db, curate.noise_max_mse_ratio)
        for sample, ok in zip(samples, clean, strict=True):
            shadow = (tile_id, sample["hr_date"]) in flags
            rows.append(
                {"tile_id": tile_id, "region": grid[tile_id].region, "split": split[tile_id], **sample}
                | {"shadow": shadow, "noisy": not ok, "kept": bool(ok and not shadow)}
            )
    return rows


def _counts(per_tile: dict[str, dict], rows: list[dict], flags: dict) -> dict:
    """Frames and samples in, removed and kept by each filter, in the order they apply."""

    def frames(kind: str) -> dict:
        total = sum(len(stats[kind]["kept"]) for stats in per_tile.values())
        kept = sum(sum(stats[kind]["kept"]) for stats in per_tile.values())
        return {"unit": f"{kind} frames", "in": total, "removed": total - kept, "kept": kept}

    n = len(rows)
    shadowed = sum(r["shadow"] for r in rows)
    noisy = sum(r["noisy"] and not r["shadow"] for r in rows)
    return {
        "s2_clouds": frames("s2"),
        "vhr_clouds": frames("vhr"),
        "shadows": {"unit": "samples", "in": n, "removed": shadowed, "kept": n - shadowed, "tile_dates": len(flags)},
        "noise": {"unit": "samples", "in": n - shadowed, "removed": noisy, "kept": n - shadowed - noisy},
    }


def curate_reduce(cfg: Config) -> dict:
    """Filter, normalise and shard the samples of every curated tile; write stats.json, samples.csv, plots, report."""
    curate = cfg.curate
    grid = {t.tile_id: t for t in read_grid(cfg.run_path)}
    split = split_tiles(list(grid), curate.split, cfg.train.seed)
    curated, failed = _curated_tiles(cfg, grid, split)
    per_tile = {t: _read_stats(cfg, t) for t in curated}
    # shadows: a cloudy label date of one tile flags its neighbours' same date (needs every tile: reduce side)
    covers = {t: dict(zip(s["vhr"]["dates"], s["vhr"]["cloud_cover"], strict=True)) for t, s in per_tile.items()}
    flags = shadow_flags(covers, {t: grid[t].neighbours for t in curated}, curate.shadow_cloud_cover)
    rows = _decide(cfg, per_tile, grid, split, flags)
    kept = {t: np.array([r["kept"] for r in rows if r["tile_id"] == t], bool) for t in curated}
    norm = _normalisation(cfg, grid, split, curated, kept)
    counts = _write_shards(cfg, grid, split, curated, kept, per_tile, norm)
    stats = _run_stats(cfg, grid, curated, failed, per_tile, split, counts, rows, flags, norm)
    _write_curation(cfg, curated, per_tile, rows, stats)
    return {"samples": counts, "tiles": len(curated), "failed": len(failed)}


@dataclass(frozen=True)
class _Normalisation:
    """S2 factors per region ((4,) float32, divide raw S2 and matched labels) and the [0, 1] scales after them."""

    factors: dict[str, np.ndarray]
    lr: BandScale  # S2, on factor-normalised values
    hr: BandScale  # labels, on factor-normalised values


def _curated_tiles(cfg: Config, grid: dict[str, Tile], split: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """(curated tiles in grid order, {failed tile: error}); StageError when no training tile has been curated."""
    curated = [t for t in grid if state.is_done(cfg.run_path, "curate", t)]
    failed = state.failures(cfg.run_path, "curate")
    if not any(split[t] == "train" for t in curated):
        raise StageError(f"no training tile has been curated (failed: {sorted(failed) or 'none'}); see _state/curate/")
    return curated, failed


def _corrupt_tile(path: Path, tile_id: str, exc: Exception) -> StageError:
    """The error for a curated tile file that cannot be read: the file, and the command that rebuilds it."""
    return StageError(
        f"curated tile file {path} is corrupt or truncated ({type(exc).__name__}: {exc}); rebuild it: delete "
        f"_state/curate/{tile_id}.done and re-run `srpipe curate`"
    )


def _read_stats(cfg: Config, tile_id: str) -> dict:
    """A curated tile's stats (curation/tiles/<tile>.json); StageError naming the file when it cannot be read."""
    path = cfg.layout.curated_tile(tile_id)[0]
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _corrupt_tile(path, tile_id, exc) from exc


def _read_tile(cfg: Config, tile_id: str, keys: Iterable[str], rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Datasets `keys` (shards.TILE_FIELDS) of a tile's raw samples file, opened once; only samples `rows` if given."""
    path = cfg.layout.curated_tile(tile_id)[1]
    try:
        with h5py.File(path, "r") as f:
            values = {key: f[key][()] for key in keys}
    except (OSError, KeyError) as exc:  # h5py's errors on a truncated or altered file
        raise _corrupt_tile(path, tile_id, exc) from exc
    return values if rows is None else {key: value[rows] for key, value in values.items()}


def _normalisation(
    cfg: Config, grid: dict[str, Tile], split: dict[str, str], curated: list[str], kept: dict[str, np.ndarray]
) -> _Normalisation:
    """Cloud-free S2 factors per region over all its curated tiles; percentiles over the training tiles' kept pixels."""
    train = [t for t in curated if split[t] == "train"]
    lr_pixels, hr_pixels = {}, {}  # (M, 4) S2 pixels of every curated tile, (kept, P, 4) label pixels of training ones
    for t in curated:
        pixels = _read_tile(cfg, t, ["lr_pixels", "hr_pixels"] if split[t] == "train" else ["lr_pixels"])
        lr_pixels[t] = pixels["lr_pixels"]
        if split[t] == "train":
            hr_pixels[t] = pixels["hr_pixels"][kept[t]]
    regions = sorted({grid[t].region for t in curated})
    factors = {
        g: region_factors(np.concatenate([lr_pixels[t] for t in curated if grid[t].region == g])) for g in regions
    }
    lr_norm = percentile_scale(
        np.concatenate([lr_pixels[t] / factors[grid[t].region] for t in train]), cfg.curate.percentiles
    )
    hr_parts = [hr_pixels[t].reshape(-1, 4) / factors[grid[t].region] for t in train]
    if not any(len(part) for part in hr_parts):
        raise StageError(
            "the shadow and noise filters removed every training sample; check curate.noise_min_ssim, "
            "curate.noise_min_psnr_db, curate.noise_max_mse_ratio and curate.shadow_cloud_cover in curation/samples.csv"
        )
    return _Normalisation(factors, lr_norm, percentile_scale(np.concatenate(hr_parts), cfg.curate.percentiles))


def _write_shards(
    cfg: Config,
    grid: dict[str, Tile],
    split: dict[str, str],
    curated: list[str],
    kept: dict[str, np.ndarray],
    per_tile: dict[str, dict],
    norm: _Normalisation,
) -> dict[str, int]:
    """Write `datasets/` (shards.SHARD_FIELDS) atomically, streaming one tile at a time; {split: samples written}."""
    counts = {s: 0 for s in SPLITS}
    attrs = {"bands": ",".join(BANDS), "scale": cfg.source.scale, "lr_resolution_m": cfg.source.lr_resolution_m}
    attrs["score_names"] = ",".join(SCORE_NAMES)
    with state.atomic_path(cfg.layout.datasets) as folder:
        folder.mkdir()
        for name in SPLITS:
            writer = ShardWriter(folder, name, cfg.curate.shard_size, {**attrs, "split": name})
            for t in (t for t in curated if split[t] == name and kept[t].any()):
                raw = _read_tile(cfg, t, _SHARD_KEYS_FROM_TILE, kept[t])
                label_medians = np.asarray(per_tile[t]["label_medians"], np.float32)
                writer.add(_shard_batch(t, raw, norm.factors[grid[t].region], label_medians, norm))
            counts[name] = writer.close()
    return counts


def _shard_batch(
    tile_id: str, raw: dict[str, np.ndarray], factors: np.ndarray, label_medians: np.ndarray, norm: _Normalisation
) -> dict[str, np.ndarray]:
    """A tile's kept raw samples in shard form (SHARD_FIELDS): S2 and matched labels by the region's (4,) `factors`,
    unmatched labels by the tile's (4,) `label_medians`, then each by its [0, 1] scale; the rest as the map wrote it."""
    factors, label_medians = factors[:, None, None], label_medians[:, None, None]
    batch = {key: raw[key] for key in _SHARD_KEYS_FROM_TILE}
    batch["lr"] = norm.lr.apply(raw["lr"] / factors, band_axis=2)
    batch["hr"] = norm.hr.apply(raw["hr"] / factors, band_axis=1)
    batch["hr_unmatched"] = norm.hr.apply(raw["hr_unmatched"] / label_medians, band_axis=1)
    batch["tile_id"] = [tile_id] * len(raw["lr"])
    return {key: np.asarray(batch[key], dtype=field.dtype) for key, field in SHARD_FIELDS.items()}


def _run_stats(
    cfg: Config,
    grid: dict[str, Tile],
    curated: list[str],
    failed: dict[str, str],
    per_tile: dict[str, dict],
    split: dict[str, str],
    counts: dict[str, int],
    rows: list[dict],
    flags: dict,
    norm: _Normalisation,
) -> dict:
    """`curation/stats.json`'s content (without `figures`): scales per region and of the main one, split, counts."""
    regions = {
        g: {
            "s2_factors": factors.tolist(),
            "lr_scale": fold_factors(norm.lr, factors).to_json(),
            "hr_scale": fold_factors(norm.hr, factors).to_json(),
            "tiles": [t for t in curated if grid[t].region == g],
        }
        for g, factors in norm.factors.items()
    }
    filters = _counts(per_tile, rows, flags)
    main = max(regions, key=lambda g: len(regions[g]["tiles"]))
    return {
        "bands": list(BANDS),
        "percentiles": list(cfg.curate.percentiles),
        "lr_scale": regions[main]["lr_scale"],
        "hr_scale": regions[main]["hr_scale"],
        "main_region": main,
        "regions": regions,
        "lr_scale_normalised": norm.lr.to_json(),
        "hr_scale_normalised": norm.hr.to_json(),
        "label_medians": {t: per_tile[t]["label_medians"] for t in curated},
        "split": split,
        "n_samples": counts,
        "tiles_curated": curated,
        "tiles_failed": failed,
        "filters": filters,
        "shadow_flags": {f"{t}@{d}": src for (t, d), src in flags.items()},
        "settings": {k: getattr(cfg.curate, k) for k in type(cfg.curate).__dataclass_fields__},
        "s2_frames": filters["s2_clouds"],
        "vhr_frames": filters["vhr_clouds"],
    }


def _write_curation(cfg: Config, curated: list[str], per_tile: dict[str, dict], rows: list[dict], stats: dict) -> None:
    """Write `curation/`: samples.csv, the figures (blue histograms of 8 random tiles), stats.json, report.md."""
    folder = cfg.layout.curation
    with state.atomic_path(folder / "samples.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, SAMPLE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    shown = np.random.default_rng(cfg.source.seed).permutation(curated)[:8]
    blue = {t: _read_tile(cfg, t, ["vhr_blue"])["vhr_blue"] for t in sorted(shown)}
    stats["figures"] = plots.curation_figures(cfg, folder, per_tile, rows, blue)
    state.write_json(cfg.layout.curation_stats, stats)
    write_report(folder / "report.md", stats)
