"""Country dry run without a GPU: `srpipe run configs/lithuania-dry-run.toml` (synthetic S2, packaged CPU weights).

`python benchmarks/lithuania_dry_run.py [--square-km 20 | --aoi FILE] [--config FILE] [--run-dir DIR]`: runs the
whole chain (plan, download, infer, mosaic, catalog) in a child process and measures its wall seconds, seconds per
stage (from the printed summaries), peak RSS (the largest process, from getrusage of the waited children, and the
whole process tree, sampled every 0.5 s), output GB (predictions + mosaics), tiles and mosaics written. It also
projects the method's cost on a GPU: FLOPs of the method-default HighRes-Net (64 channels, 8 layers, K = 8 frames)
per tile of 10 m S2 (counted with torch's FlopCounterMode), divided by a stated GPU throughput, as km^2 per GPU-hour
and GPU-hours per date for the run's tiles. Each run is stored with its own commit under "runs" of
benchmarks/results/lithuania_dry_run.json ("LTU" for the full outline, "square_<n>km" for a test square).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import psutil
import tomli_w
from provenance import common, provenance

from srpipe.config import Config, load_config
from srpipe.data.grid import Tile, read_grid

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "lithuania-dry-run.toml"
OUT = REPO / "benchmarks" / "results" / "lithuania_dry_run.json"
SQUARE_CENTRE = (24.0, 55.3)  # lon, lat: central Lithuania (UTM 34N), for --square-km
# the projection's stated GPU: NVIDIA H100/H200 SXM dense BF16 tensor peak (datasheet, without sparsity), and the
# share of it a conv net of this size is assumed to reach (not measured here: this machine has no GPU)
GPU_NAME, GPU_PEAK_FLOP_S, GPU_UTILISATION = "NVIDIA H100/H200 SXM, dense BF16", 989e12, 0.5
SUMMARY = re.compile(r"^([\w-]+): (\d+) done, (\d+) skipped \(done before\), (\d+) failed in ([\d.]+) s$")


def _square_aoi(path: Path, km: float) -> Path:
    """Write a GeoJSON square of `km` x `km` (UTM 34N) around SQUARE_CENTRE; return its path."""
    from pyproj import Transformer

    to_utm = Transformer.from_crs(4326, 32634, always_xy=True)
    to_wgs84 = Transformer.from_crs(32634, 4326, always_xy=True)
    cx, cy = to_utm.transform(*SQUARE_CENTRE)
    half = km * 500.0
    corners = [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    ring = [list(to_wgs84.transform(x, y)) for x, y in [*corners, corners[0]]]
    feature = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


def _run_config(args: argparse.Namespace) -> tuple[Path, str]:
    """(a copy of the config with run_dir and the AOI overridden, written beside the run; the run's result key)."""
    base = args.config.resolve()
    settings = tomllib.loads(base.read_text())
    plan = settings.setdefault("plan", {})
    plan["aoi"] = str((base.parent / plan["aoi"]).resolve())
    key = plan.get("region") or Path(plan["aoi"]).stem
    if args.square_km:
        key = plan["region"] = f"square_{args.square_km:g}km"
    elif args.aoi:
        key = plan["region"] = args.aoi.stem
    run_dir = (args.run_dir or REPO / "runs" / f"dry-run-{key}").resolve()
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    if args.square_km:
        plan["aoi"] = str(_square_aoi(run_dir.parent / f"{run_dir.name}_aoi.geojson", args.square_km))
    elif args.aoi:
        plan["aoi"] = str(args.aoi.resolve())
    settings["run_dir"] = str(run_dir)
    path = run_dir.parent / f"{run_dir.name}.toml"
    path.write_text(tomli_w.dumps(settings))
    return path, key


class _TreeRss:
    """Samples the summed RSS of a process and its descendants every `period_s`; `peak_mb` is the largest sum."""

    def __init__(self, pid: int, period_s: float = 0.5) -> None:
        self.peak_mb, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(pid, period_s), daemon=True)
        self._thread.start()

    def _loop(self, pid: int, period_s: float) -> None:
        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.wait(period_s):
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)

    def stop(self) -> float:
        """Stop sampling; the peak in MB."""
        self._stop.set()
        self._thread.join()
        return self.peak_mb


def run_chain(config: Path, log: Path) -> dict:
    """Wall seconds, per-stage summaries, peak RSS (largest process; sampled tree) of `srpipe run config`."""
    start = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "srpipe", "run", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        tree = _TreeRss(child.pid)
        code = child.wait()
    wall_s = time.perf_counter() - start
    tree_mb = tree.stop()
    largest_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux; waited descendants
    text = log.read_text()
    stages = {}
    for line in text.splitlines():
        found = SUMMARY.match(line.strip())
        if found:
            name, done, skipped, failed, seconds = found.groups()
            stages[name] = {"done": int(done), "skipped": int(skipped), "failed": int(failed), "s": float(seconds)}
    if code != 0:
        raise RuntimeError(f"srpipe run {config} exited {code}; log {log}:\n{text[-3000:]}")
    plan_line = next((line for line in text.splitlines() if re.match(r"plan: \d+ tiles", line)), "")
    return {
        "wall_s": round(wall_s, 1),
        "stages": stages,
        "peak_rss_mb_largest_process": round(largest_mb, 1),
        "peak_rss_mb_tree_sum_sampled": round(tree_mb, 1),
        "plan_printed": plan_line,
    }


def outputs(run_dir: Path) -> dict:
    """Tiles planned, prediction COGs, mosaic files and their sizes (GB) in a finished run directory."""

    def size_gb(files: list[Path]) -> float:
        return round(sum(f.stat().st_size for f in files) / 1e9, 3)

    predictions = [p for p in (run_dir / "predictions").rglob("*.tif")]
    mosaics = run_dir / "mosaics"
    files = [p for p in mosaics.rglob("*") if p.is_file()] if mosaics.exists() else []
    tifs = [p for p in files if p.suffix == ".tif"]
    return {
        "tiles": len(read_grid(run_dir)),
        "prediction_cogs": len(predictions),
        "predictions_gb": size_gb(predictions),
        "mosaic_cogs": len(tifs),
        "mosaic_vrts": sum(p.suffix == ".vrt" for p in files),
        "stac_files": sum("stac" in p.relative_to(mosaics).parts for p in files),
        "mosaics_gb": size_gb(files),
        "output_gb": round(size_gb(predictions) + size_gb(files), 3),
        "mosaic_names": sorted(p.name for p in tifs)[:20],
    }


def generation_ms(cfg: Config, tiles: list[Tile], n: int = 300) -> float:
    """Milliseconds per tile of `synthetic_stack` over `n` of the run's tiles (spread over the grid), this process."""
    from srpipe.sources.synthetic.source import synthetic_stack

    picked = tiles[:: max(1, len(tiles) // n)][:n]
    synthetic_stack(cfg.source, picked[0])  # the per-config caches (dates, radiometry) are filled once per process
    start = time.perf_counter()
    for tile in picked:
        synthetic_stack(cfg.source, tile)
    return round((time.perf_counter() - start) / len(picked) * 1000, 2)


def core_edge_disagreement(cfg: Config, tiles: list[Tile], n: int = 100) -> dict:
    """Mean |DN| difference of two east-west neighbours' predictions on the column of their shared core edge (what a
    seam could show), beside the mean |DN| step between adjacent columns inside a tile (the texture), over n pairs."""
    import rasterio

    by_core = {(t.epsg, t.core[0], t.core[1]): t for t in tiles}
    pairs = [(t, by_core.get((t.epsg, t.core[2], t.core[1]))) for t in tiles[:: max(1, len(tiles) // (2 * n))]]
    edge, texture = [], []
    for west, east in [(w, e) for w, e in pairs if e is not None][:n]:
        files = [
            cfg.layout.prediction(cfg.prediction_model, t.tile_id, cfg.as_of_date.isoformat()) for t in (west, east)
        ]
        if not all(f.exists() for f in files):
            continue
        with rasterio.open(files[0]) as a, rasterio.open(files[1]) as b:
            col_a = round((west.core[2] - a.bounds.left) / a.res[0])  # the first column east of the shared edge
            col_b = round((west.core[2] - b.bounds.left) / b.res[0])
            image_a, image_b = a.read().astype(np.float64), b.read().astype(np.float64)
        edge.append(np.abs(image_a[:, :, col_a] - image_b[:, :, col_b]).mean())
        texture.append(np.abs(np.diff(image_a, axis=2)).mean())
    return {
        "pairs": len(edge),
        "edge_dn": round(float(np.mean(edge)), 1) if edge else None,
        "adjacent_column_step_dn": round(float(np.mean(texture)), 1) if texture else None,
    }


def method_flops(lr_px: int = 64) -> dict:
    """FLOPs of one forward of the method-default HighRes-Net (ModelConfig(), x4, K = InferConfig().n_frames) and
    of the dry run's packaged weights' shape, per LR pixel (FlopCounterMode on a 1 x K x 4 x lr_px x lr_px input)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from srpipe.config import InferConfig, ModelConfig
    from srpipe.models.highresnet import build_model

    k = InferConfig().n_frames
    shapes = {"method_default": ModelConfig(), "sample_x4": ModelConfig(channels=32, encoder_layers=2)}
    out = {"n_frames": k, "probe_lr_px": lr_px}
    for name, shape in shapes.items():
        net = build_model(shape, scale=4).eval()
        lr, mask = torch.rand(1, k, 4, lr_px, lr_px), torch.ones(1, k, lr_px, lr_px, dtype=torch.bool)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(lr, mask)
        out[name] = {"channels": shape.channels, "encoder_layers": shape.encoder_layers}
        out[name]["flops_per_lr_px"] = counter.get_total_flops() / lr_px**2
    return out


def gpu_projection(flops: dict, tiles: int, tile_box_m: float, core_km2: float) -> dict:
    """km^2 per GPU-hour and GPU-hours per date of the method at 10 m S2 (tiles run on their buffered boxes)."""
    per_lr_px = flops["method_default"]["flops_per_lr_px"]
    lr_px_per_tile = (tile_box_m / 10.0) ** 2  # 10 m S2 pixels of a buffered box
    flop_s = GPU_PEAK_FLOP_S * GPU_UTILISATION
    flops_per_km2_input = per_lr_px * 1e4  # 1 km^2 = 10^4 S2 pixels of 10 m
    flops_per_tile = per_lr_px * lr_px_per_tile
    gpu_hours = tiles * flops_per_tile / flop_s / 3600
    return {
        "gpu": GPU_NAME,
        "gpu_peak_flop_s": GPU_PEAK_FLOP_S,
        "assumed_utilisation": GPU_UTILISATION,
        "flops_per_km2_of_10m_input": flops_per_km2_input,
        "input_km2_per_gpu_hour": round(flop_s * 3600 / flops_per_km2_input),
        "flops_per_tile": flops_per_tile,
        "output_km2_per_gpu_hour": round(core_km2 / gpu_hours) if gpu_hours else None,  # cores kept, boxes run
        "gpu_hours_per_date": float(f"{gpu_hours:.3g}"),
        "note": "compute only (forward, 1 output date, no self-ensemble: x8 with it); reading S2 and writing COGs "
        "not included; the tiles' buffered boxes are what runs, their 2 km cores what the mosaic keeps",
    }


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--aoi", type=Path, help="another AOI file than the config's (e.g. a small test area)")
    where.add_argument("--square-km", type=float, help="a square of this side in central Lithuania instead")
    parser.add_argument("--run-dir", type=Path, help="default: runs/dry-run-<key> (deleted first, kept after)")
    return parser.parse_args()


def main() -> None:
    args = _parse()
    config, key = _run_config(args)
    cfg = load_config(config)
    run_dir = cfg.run_path
    shutil.rmtree(run_dir, ignore_errors=True)  # a dry run measures a fresh chain, not a re-run of done units
    measured, load_start = provenance(), os.getloadavg()[0]
    chain = run_chain(config, run_dir.parent / f"{run_dir.name}.log")
    files = outputs(run_dir)
    settings = tomllib.loads(config.read_text())
    tiles = read_grid(run_dir)
    box_m = tiles[0].bounds[2] - tiles[0].bounds[0]
    core_km2 = sum((t.core[2] - t.core[0]) * (t.core[3] - t.core[1]) for t in tiles) / 1e6
    flops = method_flops()
    infer_s = chain["stages"].get("infer", {}).get("s", 0.0)
    result = measured | {
        "gpu": None,
        "load_average_1min_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "config": os.path.relpath(args.config.resolve(), REPO),
        "settings": {
            "source": settings["source"],
            "infer": settings.get("infer", {}),
            "workers": settings.get("workers"),
            "sr_resolution_m": cfg.source.lr_resolution_m / cfg.source.scale,
        },
        "chain": chain,
        "outputs": files,
        "core_km2": round(core_km2, 1),
        "neighbour_disagreement_at_core_edges": core_edge_disagreement(cfg, tiles),
        "cpu_dry_run": {
            "synthetic_ms_per_tile": generation_ms(cfg, tiles) if cfg.source.name == "synthetic" else None,
            "tiles_per_s_overall": round(files["tiles"] / chain["wall_s"], 1),
            "tiles_per_s_infer": round(files["tiles"] / infer_s, 1) if infer_s else None,
        },
        "flops": flops,
        "gpu_projection_method_at_10m": gpu_projection(flops, len(tiles), box_m, core_km2),
    }
    runs = json.loads(OUT.read_text())["runs"] if OUT.exists() else {}
    runs[key] = result
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(common(list(runs.values())) | {"runs": runs}, indent=2) + "\n")
    _print(key, result)


def _print(key: str, r: dict) -> None:
    """The figures, one line each."""
    c, o, g = r["chain"], r["outputs"], r["gpu_projection_method_at_10m"]
    stages = ", ".join(f"{n} {s['s']:.0f} s ({s['done']} done, {s['failed']} failed)" for n, s in c["stages"].items())
    print(f"{key}: {o['tiles']} tiles in {c['wall_s']:.0f} s wall | {stages}")
    print(f"  synthetic S2 stack: {r['cpu_dry_run']['synthetic_ms_per_tile']} ms per tile (one process)")
    seam = r["neighbour_disagreement_at_core_edges"]
    print(
        f"  neighbours at their core edge differ by {seam['edge_dn']} DN on average ({seam['pairs']} pairs); "
        f"adjacent columns inside a tile by {seam['adjacent_column_step_dn']} DN"
    )
    print(
        f"  peak RSS {c['peak_rss_mb_largest_process']:.0f} MB (largest process), "
        f"{c['peak_rss_mb_tree_sum_sampled']:.0f} MB (RSS summed over the process tree: shared pages count in each)"
    )
    print(
        f"  outputs {o['output_gb']:.2f} GB: {o['prediction_cogs']} prediction COGs ({o['predictions_gb']:.2f} GB), "
        f"{o['mosaic_cogs']} mosaic COGs + {o['mosaic_vrts']} VRTs + {o['stac_files']} STAC files "
        f"({o['mosaics_gb']:.2f} GB) at {r['settings']['sr_resolution_m']:g} m"
    )
    flops = r["flops"]["method_default"]["flops_per_lr_px"]
    print(
        f"  method model: {flops / 1e6:.1f} MFLOP per 10 m S2 pixel -> {g['input_km2_per_gpu_hour']:,} km^2 of input "
        f"per GPU-hour on {g['gpu']} at {g['assumed_utilisation']:.0%} of {g['gpu_peak_flop_s'] / 1e12:.0f} TFLOP/s; "
        f"these {o['tiles']} tiles: {g['gpu_hours_per_date']:.3g} GPU-hours per date  -> {OUT}"
    )


if __name__ == "__main__":
    main()
