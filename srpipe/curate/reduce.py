"""Curate reduce, one per run: split tiles, percentile normalisation over training tiles, HDF5 shards, report."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from srpipe import BANDS, state
from srpipe.config import Config
from srpipe.curate.dataset import ShardWriter
from srpipe.curate.normalise import BandScale, percentile_scale
from srpipe.curate.tile import tile_paths
from srpipe.errors import StageError
from srpipe.grid import read_grid

SPLITS = ("train", "val", "test")


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
    """(S2 scale, label scale) from curation stats."""
    return BandScale.from_json(stats["lr_scale"]), BandScale.from_json(stats["hr_scale"])


def curate_reduce(cfg: Config) -> dict:
    """Normalise and shard the samples of every curated tile; write stats.json and report.md."""
    run = cfg.run_path
    all_tiles = [t.tile_id for t in read_grid(run)]
    split = split_tiles(all_tiles, cfg.curate.split, cfg.train.seed)
    curated = [t for t in all_tiles if state.is_done(run, "curate", t)]
    failed = state.failures(run, "curate")
    train = [t for t in curated if split[t] == "train"]
    if not train:
        raise StageError(f"no training tile has been curated (failed: {sorted(failed) or 'none'}); see _state/curate/")

    def pixels(key: str, tiles: list[str]) -> np.ndarray:
        parts = []
        for t in tiles:
            with h5py.File(tile_paths(run, t)[1], "r") as f:
                parts.append(f[key][()])
        return np.concatenate(parts)

    lr_scale = percentile_scale(pixels("lr_pixels", train), cfg.curate.percentiles)
    hr_scale = percentile_scale(pixels("hr_pixels", train), cfg.curate.percentiles)
    counts = {s: 0 for s in SPLITS}
    attrs = {"bands": ",".join(BANDS), "scale": cfg.source.scale, "lr_resolution_m": cfg.source.lr_resolution_m}
    with state.atomic_path(run / "datasets") as folder:
        folder.mkdir()
        for name in SPLITS:
            writer = ShardWriter(folder, name, cfg.curate.shard_size, {**attrs, "split": name})
            for t in (t for t in curated if split[t] == name):
                with h5py.File(tile_paths(run, t)[1], "r") as f:
                    n = len(f["lr"])
                    if n == 0:
                        continue
                    writer.add(
                        {
                            "lr": lr_scale.apply(f["lr"][()], band_axis=2),
                            "lr_mask": f["lr_mask"][()],
                            "hr": hr_scale.apply(f["hr"][()], band_axis=1),
                            "hr_mask": f["hr_mask"][()],
                            "tile_id": np.asarray([t] * n, dtype="S"),
                            "hr_date": f["hr_date"][()],
                            "lr_dates": f["lr_dates"][()],
                        }
                    )
            counts[name] = writer.close()
    per_tile = {t: json.loads(tile_paths(run, t)[0].read_text()) for t in curated}
    stats = {
        "bands": list(BANDS),
        "percentiles": list(cfg.curate.percentiles),
        "lr_scale": lr_scale.to_json(),
        "hr_scale": hr_scale.to_json(),
        "split": split,
        "n_samples": counts,
        "tiles_curated": curated,
        "tiles_failed": failed,
        "s2_frames": {
            "total": sum(len(s["s2"]["kept"]) for s in per_tile.values()),
            "kept": sum(sum(s["s2"]["kept"]) for s in per_tile.values()),
        },
        "vhr_frames": {
            "total": sum(len(s["vhr"]["kept"]) for s in per_tile.values()),
            "kept": sum(sum(s["vhr"]["kept"]) for s in per_tile.values()),
        },
    }
    state.write_json(run / "curation" / "stats.json", stats)
    state.write_text(run / "curation" / "report.md", _report(stats))
    return {"samples": counts, "tiles": len(curated), "failed": len(failed)}


def _report(stats: dict) -> str:
    """Markdown summary of the curation decisions."""
    lines = [
        "# Curation report",
        "",
        f"- tiles curated: {len(stats['tiles_curated'])}; failed: {len(stats['tiles_failed'])}",
        f"- S2 frames kept (cloud cover and data mask): {stats['s2_frames']['kept']} of {stats['s2_frames']['total']}",
        f"- label frames kept (blue-threshold cloud cover): {stats['vhr_frames']['kept']} "
        f"of {stats['vhr_frames']['total']}",
        "- samples: " + ", ".join(f"{k} {v}" for k, v in stats["n_samples"].items()),
        f"- normalisation: per-band percentiles {stats['percentiles'][0]:g} and {stats['percentiles'][1]:g} "
        "over training tiles, mapped to [0, 1]",
        "",
        "| band | S2 low | S2 high | label low | label high |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, band in enumerate(stats["bands"]):
        lr, hr = stats["lr_scale"], stats["hr_scale"]
        lines.append(
            f"| {band} | {lr['low'][i]:.4f} | {lr['high'][i]:.4f} | {hr['low'][i]:.4f} | {hr['high'][i]:.4f} |"
        )
    if stats["tiles_failed"]:
        lines += ["", "## Failed tiles (left out; re-run `srpipe curate` after fixing)", ""]
        lines += [f"- {t}: {e}" for t, e in stats["tiles_failed"].items()]
    return "\n".join(lines) + "\n"
