"""Plan: the AOI -> the run's grid (`grid.gpkg`) of the tiles its source covers, and the resolved `config.toml`.

Above `grid` (tiles) and `sources/` (coverage): the one module that knows both.
"""

from __future__ import annotations

import collections
import dataclasses
import tomllib
from pathlib import Path

import pyproj
import shapely

from srpipe import state
from srpipe.config import Config, config_to_dict, dump_config
from srpipe.data.grid import Tile, check_tile_count, load_aoi, read_grid, split_aoi, write_grid
from srpipe.errors import ConfigError
from srpipe.sources import Source, make_source
from srpipe.sources.coverage import check_coverage

_OUTPUT_BANDS, _OUTPUT_BYTES = 4, 2  # an SR output: B02, B03, B04, B08 as uint16


def plan(cfg: Config) -> dict:
    """Write `config.toml` and `grid.gpkg` into the run directory, print and return the grid's figures.

    Refuses to re-plan a run with other [plan]/[source] settings; a re-plan of the same settings keeps the grid.
    """
    source = make_source(cfg.source)
    cfg = dataclasses.replace(cfg, source=source.cfg)  # the source's own defaults, resolved once for every task
    layout = cfg.layout
    cfg.run_path.mkdir(parents=True, exist_ok=True)
    if layout.config.exists() and layout.grid.exists():
        _check_same_grid(cfg)
        tiles = read_grid(cfg.run_path)
        aoi = load_aoi(cfg.plan.aoi) if Path(cfg.plan.aoi).is_file() else None  # the figures only; the grid stands
        state.write_text(layout.config, dump_config(cfg))
    else:
        aoi, tiles = _new_grid(cfg, source)
        state.write_text(layout.config, dump_config(cfg))
        write_grid(tiles, layout.grid)
    summary = _grid_figures(tiles, aoi, cfg.source.lr_resolution_m / cfg.source.scale)
    print(_figures_line(summary), flush=True)
    return summary


def _check_same_grid(cfg: Config) -> None:
    """Raise ConfigError when the run directory was planned with other [plan] or [source] settings."""
    old, new = tomllib.loads(cfg.layout.config.read_text()), config_to_dict(cfg)
    for key in ("plan", "source"):
        if old.get(key) != new[key]:
            raise ConfigError(
                f"run directory {cfg.run_path} was planned with other [{key}] settings; "
                "use a new run_dir (or delete this one) to change the grid or the source"
            )


def _new_grid(cfg: Config, source: Source) -> tuple[shapely.Geometry, list[Tile]]:
    """(AOI in EPSG:4326, its tiles) from `cfg.plan`; ConfigError when there is no AOI or it yields no tile."""
    if not cfg.plan.aoi:
        raise ConfigError("config key 'plan.aoi' is empty; set it to a GeoJSON/GPKG polygon of the area")
    aoi = load_aoi(cfg.plan.aoi)
    check_tile_count(aoi, cfg.plan.tile_size_m, cfg.plan.aoi)
    tiles = split_aoi(aoi, cfg.plan.tile_size_m, cfg.plan.tile_buffer, cfg.plan.region)
    if tiles:
        covered, report = check_coverage(source, tiles, aoi)
        if report and not covered and cfg.plan.drop_outside_source:
            raise ConfigError(_outside_message(cfg, source, aoi, report))
        if report:
            keep = "dropped them" if cfg.plan.drop_outside_source else "kept them (plan.drop_outside_source = false)"
            print(f"plan: {report}; {keep}; draw the AOI further inside to cover them", flush=True)
        tiles = covered if cfg.plan.drop_outside_source else tiles
    if not tiles:
        raise ConfigError(f"AOI {cfg.plan.aoi} yields no tiles; check that it is a polygon with area in its CRS")
    return aoi, tiles


def _outside_message(cfg: Config, source: Source, aoi: shapely.Geometry, report: str) -> str:
    """Why no tile is left: the AOI's bounds, the source's coverage, and the settings to choose."""
    coverage = source.coverage(aoi)
    where = "" if coverage is None else f" covers lon/lat {_bounds(coverage.to_crs(4326).total_bounds)}"
    return (
        f"AOI {cfg.plan.aoi} (lon/lat {_bounds(aoi.bounds)}): {report}, so no tile is left. {source.describe()}"
        f"{where}. Draw the AOI inside it, or choose another source: source.name = 'sentinelhub' (S2 and the labels "
        "of your BYOC collection, source.vhr_collection_id), 'stac' (free S2 from a STAC archive, labels from your own "
        "rasters, source.vhr_files or source.vhr_stac) or 'synthetic' (generated S2 anywhere, no labels: "
        "download, infer, mosaic and catalog with infer.model's weights)"
    )


def _bounds(box) -> str:
    """'west, south, east, north' to 3 decimals."""
    return ", ".join(f"{v:.3f}" for v in box)


def _grid_figures(tiles: list[Tile], aoi: shapely.Geometry | None, label_resolution_m: float) -> dict:
    """Tiles per zone, AOI and tile-core km^2 (geodesic, None without an AOI), output pixels and GB per date."""
    zones = collections.Counter(str(t.epsg) for t in tiles)
    core_m2 = sum((t.core[2] - t.core[0]) * (t.core[3] - t.core[1]) for t in tiles)
    pixels = round(core_m2 / label_resolution_m**2)  # per band and date: the mosaic keeps the cores
    return {
        "tiles": len(tiles),
        "tiles_per_zone": dict(sorted(zones.items())),
        "aoi_km2": None if aoi is None else abs(pyproj.Geod(ellps="WGS84").geometry_area_perimeter(aoi)[0]) / 1e6,
        "core_km2": core_m2 / 1e6,
        "label_resolution_m": label_resolution_m,
        "output_px_per_band_per_date": pixels,
        "output_gb_per_date": pixels * _OUTPUT_BANDS * _OUTPUT_BYTES / 1e9,
    }


def _figures_line(f: dict) -> str:
    """One terminal line of `_grid_figures`."""
    zones = ", ".join(f"EPSG:{epsg} {n}" for epsg, n in f["tiles_per_zone"].items())
    aoi = "?" if f["aoi_km2"] is None else f"{f['aoi_km2']:,.0f}"
    return (
        f"plan: {f['tiles']} tiles ({zones}); AOI {aoi} km^2, tile cores {f['core_km2']:,.0f} km^2; output per date "
        f"{f['output_px_per_band_per_date']:.3g} px per band at {f['label_resolution_m']:g} m = "
        f"{_size(f['output_gb_per_date'])} ({_OUTPUT_BANDS} bands, uint16)"
    )


def _size(gb: float) -> str:
    """`gb` as GB, or MB below 1 GB."""
    return f"{gb:,.1f} GB" if gb >= 1 else f"{gb * 1000:,.1f} MB"
