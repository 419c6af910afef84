"""Plan a country: `srpipe plan` of the real Lithuania and Cyprus outlines (2 km cores, 0.2 buffer), and its parts.

`python benchmarks/plan_country.py`: for each outline in tests/fixtures/countries/, the whole CLI plan in a child
process (wall seconds, peak RSS) and split_aoi / write_grid / read_grid in this process (seconds each). Compares
Lithuania with the figures before the speed-up and writes benchmarks/results/plan_country.json.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w
from provenance import provenance

from srpipe.data.grid import load_aoi, read_grid, split_aoi, write_grid
from srpipe.layout import RunLayout

REPO = Path(__file__).resolve().parents[1]
COUNTRIES = REPO / "tests" / "fixtures" / "countries"
# `srpipe plan` of Lithuania before the speed-up (the issue): 34 s idle, 72 s loaded, 556 MB peak RSS
BEFORE = {"country": "LTU", "tiles": 16411, "wall_s_idle": 34.0, "wall_s_loaded": 72.0, "peak_rss_mb": 556.0}


def cli_plan(country: str, folder: Path) -> dict:
    """Wall seconds, peak RSS (MB) and printed figures of `python -m srpipe plan` in a child process."""
    config = folder / f"{country}.toml"
    run = folder / f"run_{country}"
    plan_keys = {"aoi": str(COUNTRIES / f"{country}.geojson"), "drop_outside_source": False}  # sample: one scene
    settings = {"run_dir": str(run), "plan": plan_keys, "source": {"lr_resolution_m": 40.0}}
    config.write_text(tomli_w.dumps(settings))
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "srpipe", "plan", str(config)], stdout=subprocess.PIPE, text=True)
    printed = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not the max over all children
    wall_s = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"srpipe plan {config} failed:\n{printed}")
    figures = next(line for line in printed.splitlines() if " tiles (" in line)
    return {"wall_s": round(wall_s, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "printed": figures}


def parts(country: str, folder: Path) -> dict:
    """Seconds of split_aoi, write_grid and read_grid (first read in this process) and the tiles per zone."""
    aoi = load_aoi(COUNTRIES / f"{country}.geojson")
    start = time.perf_counter()
    tiles = split_aoi(aoi, 2000.0, 0.2, country)
    split_s = time.perf_counter() - start
    run = folder / f"parts_{country}"
    run.mkdir()
    write_grid(tiles, RunLayout(run).grid)
    write_s = time.perf_counter() - start - split_s
    back = read_grid(run)
    read_s = time.perf_counter() - start - split_s - write_s
    assert back == tiles, "the grid read back differs from the grid written"
    zones = dict(sorted(collections.Counter(str(t.epsg) for t in tiles).items()))
    seconds = {"split_s": split_s, "write_s": write_s, "read_s": read_s}
    return {"tiles": len(tiles), "tiles_per_zone": zones} | {k: round(v, 2) for k, v in seconds.items()}


def main() -> None:
    result: dict = provenance() | {
        "load_average_1min_start_end": [round(os.getloadavg()[0], 2)],
        "settings": {"tile_size_m": 2000.0, "tile_buffer": 0.2, "source": "sample (plan downloads nothing)"},
        "before": BEFORE,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for country in ("LTU", "CYP"):
            result[country] = {"cli": cli_plan(country, Path(tmp)), "in_process": parts(country, Path(tmp))}
    ltu = result["LTU"]["cli"]
    result["speed_up_vs_before"] = {
        "idle": round(BEFORE["wall_s_idle"] / ltu["wall_s"], 1),
        "loaded": round(BEFORE["wall_s_loaded"] / ltu["wall_s"], 1),
        "peak_rss_ratio": round(ltu["peak_rss_mb"] / BEFORE["peak_rss_mb"], 2),
    }
    result["load_average_1min_start_end"].append(round(os.getloadavg()[0], 2))
    out = REPO / "benchmarks" / "results" / "plan_country.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for country in ("LTU", "CYP"):
        cli, own = result[country]["cli"], result[country]["in_process"]
        print(f"{country}: {own['tiles']} tiles {own['tiles_per_zone']}")
        print(f"  CLI plan {cli['wall_s']:.1f} s, peak RSS {cli['peak_rss_mb']:.0f} MB | {cli['printed']}")
        print(f"  split {own['split_s']:.2f} s, write {own['write_s']:.2f} s, read {own['read_s']:.2f} s")
    s = result["speed_up_vs_before"]
    print(
        f"LTU vs before ({BEFORE['wall_s_idle']:.0f} s idle / {BEFORE['wall_s_loaded']:.0f} s loaded, "
        f"{BEFORE['peak_rss_mb']:.0f} MB): {s['idle']}x / {s['loaded']}x faster, RSS x{s['peak_rss_ratio']}  -> {out}"
    )


if __name__ == "__main__":
    main()
