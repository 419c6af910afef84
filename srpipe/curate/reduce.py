"""Curate reduce, one per run: shadow and noise filters, region factors, percentiles, HDF5 shards, plots, report.

Everything here reads the map's outputs (`curation/tiles/<tile>.{json,h5}`) and the grid; changing a filter's threshold
re-runs only this step. Normalised units: S2 and matched labels are divided by their region's S2 factors, unmatched
labels by their tile's label medians; then per-band percentiles of the training tiles map them to [0, 1].
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np

from srpipe import BANDS, state
from srpipe.config import Config
from srpipe.curate import plots
from srpipe.curate.dataset import ShardWriter
from srpipe.curate.normalise import BandScale, fold_factors, percentile_scale, region_factors
from srpipe.curate.quality import SCORE_NAMES, passes_noise_filter
from srpipe.curate.report import write_report
from srpipe.curate.shadows import shadow_flags
from srpipe.curate.tile import tile_paths
from srpipe.errors import StageError
from srpipe.grid import Tile, read_grid

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


def load_stats(run_dir: str | Path) -> dict:
    """`curation/stats.json` of a curated run."""
    path = Path(run_dir) / "curation" / "stats.json"
    if not path.exists():
        raise StageError(f"{path} does not exist; run `srpipe curate` first")
    return json.loads(path.read_text())


def scales(stats: dict) -> tuple[BandScale, BandScale]:
    """(S2 scale, label scale) from curation stats, on raw S2 values (the main region's; see `regions` for others)."""
    return BandScale.from_json(stats["lr_scale"]), BandScale.from_json(stats["hr_scale"])


def read_samples(path: str | Path) -> list[dict]:
    """Rows of `curation/samples.csv`: every generated sample with its scores and filter decisions."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _decide(cfg: Config, per_tile: dict[str, dict], grid: dict[str, Tile], split: dict[str, str], flags: dict) -> list:
    """One row per generated sample: its provenance, scores, shadow flag, noise verdict and whether it is kept."""
    c = cfg.curate
    rows = []
    for t, stats in per_tile.items():
        samples = stats["samples"]
        if not samples:
            continue
        scores = np.array([[s[n] for n in SCORE_NAMES] for s in samples], np.float32)
        clean = passes_noise_filter(scores, c.noise_min_ssim, c.noise_min_psnr_db, c.noise_max_mse_ratio)
        for s, ok in zip(samples, clean, strict=True):
            shadow = (t, s["hr_date"]) in flags
            rows.append(
                {"tile_id": t, "region": grid[t].region, "split": split[t], **s}
                | {"shadow": shadow, "noisy": not ok, "kept": bool(ok and not shadow)}
            )
    return rows


def _counts(per_tile: dict[str, dict], rows: list[dict], flags: dict) -> dict:
    """Frames and samples in, removed and kept by each filter, in the order they apply."""

    def frames(kind: str) -> dict:
        total = sum(len(s[kind]["kept"]) for s in per_tile.values())
        kept = sum(sum(s[kind]["kept"]) for s in per_tile.values())
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
    run, c = cfg.run_path, cfg.curate
    grid = {t.tile_id: t for t in read_grid(run)}
    split = split_tiles(list(grid), c.split, cfg.train.seed)
    curated = [t for t in grid if state.is_done(run, "curate", t)]
    failed = state.failures(run, "curate")
    train = [t for t in curated if split[t] == "train"]
    if not train:
        raise StageError(f"no training tile has been curated (failed: {sorted(failed) or 'none'}); see _state/curate/")
    per_tile = {t: json.loads(tile_paths(run, t)[0].read_text()) for t in curated}

    # shadows: a cloudy label date of one tile flags its neighbours' same date (needs every tile: reduce side)
    covers = {t: dict(zip(s["vhr"]["dates"], s["vhr"]["cloud_cover"], strict=True)) for t, s in per_tile.items()}
    flags = shadow_flags(covers, {t: grid[t].neighbours for t in curated}, c.shadow_cloud_cover)
    rows = _decide(cfg, per_tile, grid, split, flags)
    kept = {t: np.array([r["kept"] for r in rows if r["tile_id"] == t], bool) for t in curated}

    def read(t: str, key: str, only_kept: bool = False) -> np.ndarray:
        with h5py.File(tile_paths(run, t)[1], "r") as f:
            values = f[key][()]
        return values[kept[t]] if only_kept else values

    # feature normalisation: cloud-free S2 factors per region, over every curated tile of the region
    regions = sorted({grid[t].region for t in curated})
    factors = {
        g: region_factors(np.concatenate([read(t, "lr_pixels") for t in curated if grid[t].region == g]))
        for g in regions
    }
    lr_norm = percentile_scale(
        np.concatenate([read(t, "lr_pixels") / factors[grid[t].region] for t in train]), c.percentiles
    )
    hr_parts = [read(t, "hr_pixels", True).reshape(-1, 4) / factors[grid[t].region] for t in train]
    if not any(len(part) for part in hr_parts):
        raise StageError(
            "the shadow and noise filters removed every training sample; check curate.noise_min_ssim, "
            "curate.noise_min_psnr_db, curate.noise_max_mse_ratio and curate.shadow_cloud_cover in curation/samples.csv"
        )
    hr_pixels = np.concatenate(hr_parts)
    hr_norm = percentile_scale(hr_pixels, c.percentiles)

    counts = {s: 0 for s in SPLITS}
    attrs = {"bands": ",".join(BANDS), "scale": cfg.source.scale, "lr_resolution_m": cfg.source.lr_resolution_m}
    attrs["score_names"] = ",".join(SCORE_NAMES)
    with state.atomic_path(run / "datasets") as folder:
        folder.mkdir()
        for name in SPLITS:
            writer = ShardWriter(folder, name, c.shard_size, {**attrs, "split": name})
            for t in (t for t in curated if split[t] == name and kept[t].any()):
                f_region = factors[grid[t].region][:, None, None]
                label_medians = np.asarray(per_tile[t]["label_medians"], np.float32)[:, None, None]
                n = int(kept[t].sum())
                writer.add(
                    {
                        "lr": lr_norm.apply(read(t, "lr", True) / f_region, band_axis=2),
                        "lr_mask": read(t, "lr_mask", True),
                        "hr": hr_norm.apply(read(t, "hr", True) / f_region, band_axis=1),
                        "hr_unmatched": hr_norm.apply(read(t, "hr_unmatched", True) / label_medians, band_axis=1),
                        "hr_mask": read(t, "hr_mask", True),
                        "tile_id": np.asarray([t] * n, dtype="S"),
                        "hr_date": read(t, "hr_date", True),
                        "lr_dates": read(t, "lr_dates", True),
                        "ref_date": read(t, "ref_date", True),
                        "yx": read(t, "yx", True),
                        "scores": read(t, "scores", True),
                    }
                )
            counts[name] = writer.close()

    folded = {
        g: {
            "s2_factors": factors[g].tolist(),
            "lr_scale": fold_factors(lr_norm, factors[g]).to_json(),
            "hr_scale": fold_factors(hr_norm, factors[g]).to_json(),
            "tiles": [t for t in curated if grid[t].region == g],
        }
        for g in regions
    }
    filters = _counts(per_tile, rows, flags)
    main = max(regions, key=lambda g: len(folded[g]["tiles"]))
    stats = {
        "bands": list(BANDS),
        "percentiles": list(c.percentiles),
        "lr_scale": folded[main]["lr_scale"],
        "hr_scale": folded[main]["hr_scale"],
        "main_region": main,
        "regions": folded,
        "lr_scale_normalised": lr_norm.to_json(),
        "hr_scale_normalised": hr_norm.to_json(),
        "label_medians": {t: per_tile[t]["label_medians"] for t in curated},
        "split": split,
        "n_samples": counts,
        "tiles_curated": curated,
        "tiles_failed": failed,
        "filters": filters,
        "shadow_flags": {f"{t}@{d}": src for (t, d), src in flags.items()},
        "settings": {k: getattr(c, k) for k in type(c).__dataclass_fields__},
        "s2_frames": filters["s2_clouds"],
        "vhr_frames": filters["vhr_clouds"],
    }
    folder = run / "curation"
    with state.atomic_path(folder / "samples.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, SAMPLE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    shown = np.random.default_rng(cfg.source.seed).permutation(curated)[:8]  # random tiles for the blue histograms
    figures = plots.curation_figures(cfg, folder, per_tile, rows, {t: read(t, "vhr_blue") for t in sorted(shown)})
    stats["figures"] = figures
    state.write_json(folder / "stats.json", stats)
    write_report(folder / "report.md", stats)
    return {"samples": counts, "tiles": len(curated), "failed": len(failed)}
