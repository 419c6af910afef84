"""Plan: AOI polygon -> overlapping UTM tiles (sentinelhub's UtmZoneSplitter), with neighbours, in `grid.gpkg`."""

from __future__ import annotations

import collections
import dataclasses
import functools
import tomllib
import zlib
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyproj
import shapely
from sentinelhub import CRS, BBox, UtmZoneSplitter

from srpipe import state
from srpipe.config import Config, config_to_dict, dump_config
from srpipe.errors import ConfigError, StageError
from srpipe.layout import RunLayout

_SIDES = ("minx", "miny", "maxx", "maxy")  # the order of a box tuple
_OUTPUT_BANDS, _OUTPUT_BYTES = 4, 2  # an SR output: B02, B03, B04, B08 as uint16


@dataclass(frozen=True)
class Tile:
    """One unit of work: a buffered UTM box (`bounds`, metres) around its `core`, which mosaics keep."""

    tile_id: str
    epsg: int
    bounds: tuple[float, float, float, float]
    core: tuple[float, float, float, float]
    region: str
    neighbours: tuple[str, ...] = ()

    @property
    def bbox(self) -> BBox:
        """The buffered box as a sentinelhub BBox."""
        return BBox(self.bounds, CRS(self.epsg))


def load_aoi(path: str | Path) -> shapely.Geometry:
    """Union of the AOI file's polygons in EPSG:4326; raises ConfigError if missing, empty or unprojected."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"AOI file {path} (config key 'plan.aoi') does not exist")
    frame = gpd.read_file(path)
    if frame.empty or frame.geometry.is_empty.all():
        raise ConfigError(f"AOI file {path} holds no geometry; draw a polygon inside the area of interest")
    if frame.crs is None:
        raise ConfigError(f"AOI file {path} has no CRS; save it with one (GeoJSON is EPSG:4326 by definition)")
    geometry = frame.to_crs(4326).geometry.unary_union
    if geometry.area == 0:
        raise ConfigError(f"AOI file {path} has no area (points or lines?); the AOI must be a polygon")
    return geometry


def tile_id_of(epsg: int, core: tuple[float, float, float, float]) -> str:
    """Stable id from the zone and the core's lower-left corner in km, e.g. '32618_436_4162'."""
    return f"{epsg}_{core[0] / 1000:.0f}_{core[1] / 1000:.0f}"


def tile_seed(tile_id: str) -> int:
    """A stable 32-bit seed per tile, for per-tile random streams that do not depend on the run order."""
    return zlib.crc32(tile_id.encode())


def split_aoi(aoi: shapely.Geometry, tile_size_m: float, tile_buffer: float, region: str) -> list[Tile]:
    """Tiles whose cores cover `aoi` (EPSG:4326), each buffered by `tile_buffer` of its size, neighbours filled in."""
    splitter = UtmZoneSplitter([aoi], CRS.WGS84, tile_size_m)  # ~1 s for Lithuania's 16k tiles: not the slow part
    tiles = []
    for bbox in splitter.get_bbox_list():
        epsg = int(bbox.crs.epsg)
        core = tuple(float(v) for v in bbox)
        bounds = tuple(float(v) for v in bbox.buffer(tile_buffer))
        tiles.append(Tile(tile_id_of(epsg, core), epsg, bounds, core, region))
    if not tiles:
        return []
    neighbours = _neighbours(_footprints(tiles))
    return [dataclasses.replace(t, neighbours=n) for t, n in zip(tiles, neighbours, strict=True)]


def _footprints(tiles: list[Tile]) -> gpd.GeoDataFrame:
    """Buffered tile boxes in EPSG:4326, one row per tile in `tiles` order (reprojected once per UTM zone)."""
    epsgs = np.array([t.epsg for t in tiles])
    bounds = np.array([t.bounds for t in tiles], dtype=float).reshape(-1, 4)
    geoms = np.empty(len(tiles), dtype=object)
    for epsg in np.unique(epsgs):
        rows = epsgs == epsg
        geoms[rows] = gpd.GeoSeries(shapely.box(*bounds[rows].T), crs=int(epsg)).to_crs(4326).to_numpy()
    return gpd.GeoDataFrame({"tile_id": [t.tile_id for t in tiles]}, geometry=list(geoms), crs=4326)


def _neighbours(frame: gpd.GeoDataFrame) -> list[tuple[str, ...]]:
    """Per row, the sorted ids of the other rows whose footprints intersect it (one STRtree query, across zones)."""
    left, right = frame.sindex.query(frame.geometry, predicate="intersects")
    ids = frame["tile_id"].tolist()
    found: list[list[str]] = [[] for _ in ids]
    for i, j in zip(left.tolist(), right.tolist(), strict=True):
        if i != j:
            found[i].append(ids[j])
    return [tuple(sorted(n)) for n in found]


def write_grid(tiles: list[Tile], path: Path) -> None:
    """Write `tiles` to a GeoPackage (EPSG:4326 footprints; UTM bounds and core as columns)."""
    frame = _footprints(tiles)
    frame["epsg"] = [t.epsg for t in tiles]
    frame["region"] = [t.region for t in tiles]
    frame["neighbours"] = [",".join(t.neighbours) for t in tiles]
    for i, name in enumerate(_SIDES):
        frame[f"bounds_{name}"] = [t.bounds[i] for t in tiles]
        frame[f"core_{name}"] = [t.core[i] for t in tiles]
    with state.atomic_path(path) as tmp:
        frame.to_file(tmp, driver="GPKG", layer="tiles")


def read_grid(run_dir: str | Path) -> list[Tile]:
    """Tiles of a planned run, in grid order (read once per process while grid.gpkg is unchanged)."""
    return list(_read_grid_file(*_grid_version(run_dir)))


def tiles_by_id(run_dir: str | Path) -> dict[str, Tile]:
    """{tile_id: Tile} of a planned run: one dict per grid version and process, shared (read it, do not modify it)."""
    return _tiles_by_id_file(*_grid_version(run_dir))


def _grid_version(run_dir: str | Path) -> tuple[str, int, int]:
    """(resolved path, inode, mtime in ns) of the run's grid.gpkg: the per-process cache key; StageError if none."""
    path = RunLayout(Path(run_dir)).grid
    if not path.exists():
        raise StageError(f"{path} does not exist; run `srpipe plan` first")
    return (str(path.resolve()), *state.file_version(path))


@functools.lru_cache(maxsize=4)
def _read_grid_file(path: str, inode: int, mtime_ns: int) -> tuple[Tile, ...]:
    """Tiles of one grid.gpkg version; inode and mtime key the cache, so a re-planned grid is read anew."""
    frame = gpd.read_file(path, layer="tiles", ignore_geometry=True)  # the UTM columns hold the tile; skip the WKB
    bounds = frame[[f"bounds_{side}" for side in _SIDES]].to_numpy(float).tolist()
    cores = frame[[f"core_{side}" for side in _SIDES]].to_numpy(float).tolist()
    rows = zip(frame["tile_id"], frame["epsg"], bounds, cores, frame["region"], frame["neighbours"], strict=True)
    return tuple(
        Tile(str(tile_id), int(epsg), tuple(b), tuple(c), str(region), tuple(n for n in neighbours.split(",") if n))
        for tile_id, epsg, b, c, region, neighbours in rows
    )


@functools.lru_cache(maxsize=4)
def _tiles_by_id_file(path: str, inode: int, mtime_ns: int) -> dict[str, Tile]:
    """{tile_id: Tile} of one grid.gpkg version: a stage looks up its unit in O(1), not O(tiles), per call."""
    return {t.tile_id: t for t in _read_grid_file(path, inode, mtime_ns)}


def plan(cfg: Config) -> dict:
    """Write `config.toml` and `grid.gpkg` into the run directory, print and return the grid's figures.

    Refuses to re-plan a run with other [plan]/[source] settings; a re-plan of the same settings keeps the grid.
    """
    layout = cfg.layout
    cfg.run_path.mkdir(parents=True, exist_ok=True)
    if layout.config.exists() and layout.grid.exists():
        _check_same_grid(cfg)
        tiles = read_grid(cfg.run_path)
        aoi = load_aoi(cfg.plan.aoi) if Path(cfg.plan.aoi).is_file() else None  # the figures only; the grid stands
        state.write_text(layout.config, dump_config(cfg))
    else:
        aoi, tiles = _new_grid(cfg)
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


def _new_grid(cfg: Config) -> tuple[shapely.Geometry, list[Tile]]:
    """(AOI in EPSG:4326, its tiles) from `cfg.plan`; ConfigError when there is no AOI or it yields no tile."""
    if not cfg.plan.aoi:
        raise ConfigError("config key 'plan.aoi' is empty; set it to a GeoJSON/GPKG polygon of the area")
    aoi = load_aoi(cfg.plan.aoi)
    tiles = split_aoi(aoi, cfg.plan.tile_size_m, cfg.plan.tile_buffer, cfg.plan.region)
    if tiles:
        from srpipe.sources.coverage import check_coverage  # imported here: sources import this module

        covered, report = check_coverage(cfg, tiles, aoi)
        if report and not covered and cfg.plan.drop_outside_source:
            raise ConfigError(f"AOI {cfg.plan.aoi}: {report}, so no tile is left; draw the AOI inside the source")
        if report:
            keep = "dropped them" if cfg.plan.drop_outside_source else "kept them (plan.drop_outside_source = false)"
            print(f"plan: {report}; {keep}; draw the AOI further inside to cover them", flush=True)
        tiles = covered if cfg.plan.drop_outside_source else tiles
    if not tiles:
        raise ConfigError(f"AOI {cfg.plan.aoi} yields no tiles; check that it is a polygon with area in its CRS")
    return aoi, tiles


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
