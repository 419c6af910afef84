"""Mosaic memory: peak RSS of one zone mosaic and of one 10x larger in area (ratio <= 1.2), and output MB/s.

`python benchmarks/mosaic_memory.py`: builds two runs of real-sized SR tiles (2 km cores, 0.2 buffer, 2.5 m pixels,
uint16 DN with texture and noise; an octagonal AOI inside the grid, so masking runs too): 2 x 5 tiles and 10 x 10 tiles.
Each mosaic runs `srpipe.mosaic.stage.mosaic_unit` in a child process of its own (its own rusage: peaks do not
mix), with data/cog.py as it is and with rio-cogeo's scratch copy on disk (IN_MEMORY_THRESHOLD=0, what
`cog_translate(in_memory=False)` does). Writes benchmarks/results/mosaic_memory.json.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely
from provenance import provenance
from pyproj import Transformer
from rasterio.transform import from_bounds

from srpipe import state
from srpipe.config import Config, MosaicConfig, PlanConfig
from srpipe.data.cog import write_cog
from srpipe.data.grid import Tile, write_grid

REPO = Path(__file__).resolve().parents[1]
EPSG, DATE, CORE_M, BUFFER_M, RES_M = 32634, "2016-10-31", 2000.0, 400.0, 2.5
SIZES = {"small": (2, 5), "large": (10, 10)}  # tile rows x columns: 10 x the area
VARIANTS = {"cog_as_is": {}, "scratch_on_disk": {"IN_MEMORY_THRESHOLD": "0"}}


def build_run(folder: Path, rows: int, cols: int) -> Config:
    """A planned run of rows x cols tiles with predictions on DATE and infer's done records."""
    x0, y0 = 500000.0, 6000000.0
    tiles = []
    for r in range(rows):
        for c in range(cols):
            core = (x0 + c * CORE_M, y0 + r * CORE_M, x0 + (c + 1) * CORE_M, y0 + (r + 1) * CORE_M)
            bounds = (core[0] - BUFFER_M, core[1] - BUFFER_M, core[2] + BUFFER_M, core[3] + BUFFER_M)
            tiles.append(Tile(f"{EPSG}_{core[0] / 1000:.0f}_{core[1] / 1000:.0f}", EPSG, bounds, core, "bench"))
    aoi = folder / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": _octagon(x0, y0, cols, rows)}))
    cfg = Config(run_dir=str(folder / "run"), plan=PlanConfig(aoi=str(aoi), region="bench"), mosaic=MosaicConfig())
    write_grid(tiles, cfg.layout.grid)
    rng = np.random.default_rng(0)
    n = round((CORE_M + 2 * BUFFER_M) / RES_M)
    ramp = (np.add.outer(np.arange(n), np.arange(n)) % 512).astype(np.uint16)
    for i, t in enumerate(tiles):
        image = (1000 + 10 * i + ramp + rng.integers(0, 32, (4, n, n), dtype=np.uint16)).astype(np.uint16)
        write_cog(cfg.layout.prediction(cfg.prediction_model, t.tile_id, DATE), image, from_bounds(*t.bounds, n, n),
                  EPSG, cfg.mosaic, {"tile_id": t.tile_id})  # fmt: skip
        record = {"epsg": EPSG, "dates": [DATE], "offset_dn": 0, "frames": {DATE: [DATE]}, "version": "bench"}
        state.mark_done(cfg.run_path, "infer", t.tile_id, record)
    return cfg


def _octagon(x0: float, y0: float, cols: int, rows: int) -> dict:
    """An octagon inscribed in the grid (EPSG:4326 GeoJSON geometry): a tenth of the area outside it."""
    cx, cy = x0 + cols * CORE_M / 2, y0 + rows * CORE_M / 2
    stretch = 0.98 / math.cos(math.pi / 8)  # the octagon's sides, not its corners, 2 % inside the grid's edges
    rx, ry = cols * CORE_M / 2 * stretch, rows * CORE_M / 2 * stretch
    angles = [math.pi / 8 + k * math.pi / 4 for k in range(8)]
    ring = [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]
    ring = [(min(max(x, x0), x0 + cols * CORE_M), min(max(y, y0), y0 + rows * CORE_M)) for x, y in ring]
    to_wgs84 = Transformer.from_crs(EPSG, 4326, always_xy=True)
    return shapely.geometry.mapping(shapely.Polygon([to_wgs84.transform(x, y) for x, y in ring]))


def child(run_dir: str) -> None:
    """In a child process: mosaic the run's one unit and print its figures as JSON."""
    from srpipe.mosaic.stage import mosaic_unit

    cfg = Config(run_dir=run_dir, plan=PlanConfig(aoi=str(Path(run_dir).parent / "aoi.geojson"), region="bench"))
    start = time.perf_counter()
    info = mosaic_unit(cfg, f"{EPSG}_{DATE}")["mosaics"][0]
    seconds = time.perf_counter() - start
    size_mb = Path(info["path"]).stat().st_size / 1e6
    print(json.dumps({"shape": info["shape"], "tiles": info["tiles"], "seconds": seconds, "cog_mb": size_mb}))


def measure(run_dir: Path, env: dict[str, str]) -> dict:
    """Peak RSS (MB), seconds and MB/s of one mosaic in a child process of its own."""
    cmd = [sys.executable, __file__, "--child", str(run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
    printed = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"mosaic of {run_dir} failed:\n{printed}")
    figures = json.loads(printed.strip().splitlines()[-1])
    height, width = figures["shape"]
    return {
        "shape": [height, width],
        "tiles": figures["tiles"],
        "raw_mb": round(height * width * 4 * 2 / 1e6, 1),  # 4 bands uint16
        "cog_mb": round(figures["cog_mb"], 1),
        "seconds": round(figures["seconds"], 2),
        "output_mb_per_s": round(height * width * 4 * 2 / 1e6 / figures["seconds"], 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def main() -> None:
    result: dict = provenance() | {
        "load_average_1min_start_end": [round(os.getloadavg()[0], 2)],
        "settings": {"core_m": CORE_M, "buffer_m": BUFFER_M, "resolution_m": RES_M, "sizes_tiles": SIZES},
    }
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for name, (rows, cols) in SIZES.items():
            (Path(tmp) / name).mkdir()
            start = time.perf_counter()
            runs[name] = build_run(Path(tmp) / name, rows, cols).run_path
            print(f"{name}: {rows * cols} predictions written in {time.perf_counter() - start:.0f} s", flush=True)
        for variant, env in VARIANTS.items():
            result[variant] = {name: measure(run, env) for name, run in runs.items()}
            small, large = result[variant]["small"], result[variant]["large"]
            result[variant]["peak_rss_ratio"] = round(large["peak_rss_mb"] / small["peak_rss_mb"], 2)
            print(f"{variant}: {json.dumps(result[variant])}", flush=True)
    result["peak_rss_ratio"] = result["cog_as_is"]["peak_rss_ratio"]
    result["peak_rss_ratio_scratch_on_disk"] = result["scratch_on_disk"]["peak_rss_ratio"]
    result["output_mb_per_s"] = result["cog_as_is"]["large"]["output_mb_per_s"]
    result["load_average_1min_start_end"].append(round(os.getloadavg()[0], 2))
    out = REPO / "benchmarks" / "results" / "mosaic_memory.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for variant in VARIANTS:
        s, big = result[variant]["small"], result[variant]["large"]
        print(
            f"{variant}: {s['shape']} px {s['peak_rss_mb']:.0f} MB peak, {big['shape']} px {big['peak_rss_mb']:.0f} MB "
            f"peak: ratio {result[variant]['peak_rss_ratio']} (<= 1.2 wanted); {big['output_mb_per_s']} MB/s raw"
        )
    print(f"-> {out}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
