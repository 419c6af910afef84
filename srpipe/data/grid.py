"""The grid: AOI polygon -> overlapping UTM tiles (sentinelhub's UtmZoneSplitter), with neighbours, in `grid.gpkg`."""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from sentinelhub import CRS, BBox, UtmZoneSplitter

from srpipe import state
from srpipe.errors import ConfigError, StageError
from srpipe.layout import RunLayout

_SIDES = ("minx", "miny", "maxx", "maxy")  # the order of a box tuple
MAX_TILES = 500_000  # tiles one run plans at most (Lithuania: 16k at 2 km); more is a wrong CRS or a typo'd size


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
    frame = _read_aoi(path)
    if frame.empty or frame.geometry.is_empty.all():
        raise ConfigError(f"AOI file {path} holds no geometry; draw a polygon inside the area of interest")
    if frame.crs is None:
        raise ConfigError(f"AOI file {path} has no CRS; save it with one (GeoJSON is EPSG:4326 by definition)")
    frame = _in_wgs84(frame, path)
    invalid = frame[~frame.geometry.is_valid]
    if not invalid.empty:  # e.g. a self-intersecting ring: a polygon meant as one, drawn crossing itself
        reasons = "; ".join(shapely.is_valid_reason(invalid.geometry.to_numpy()).tolist())
        warnings.warn(f"AOI file {path}: invalid geometry ({reasons}); repaired with shapely.make_valid", stacklevel=2)
        frame = frame.set_geometry(shapely.make_valid(frame.geometry.to_numpy()))
    geometry = shapely.union_all(frame.geometry.to_numpy())
    polygons = shapely.get_parts(geometry)
    geometry = shapely.union_all([p for p in polygons if p.area > 0] or [shapely.Polygon()])
    if geometry.is_empty:
        kinds = sorted({p.geom_type for p in polygons})
        raise ConfigError(
            f"AOI file {path} holds only {', '.join(kinds)} (no area): the AOI must be a polygon around the area"
        )
    return geometry


def _read_aoi(path: Path) -> gpd.GeoDataFrame:
    """The AOI file as a GeoDataFrame; ConfigError naming the file when GDAL cannot read it (format, CRS, bytes)."""
    try:
        return gpd.read_file(path)
    except Exception as exc:  # pyogrio, GDAL and pyproj raise their own kinds for a bad file
        raise ConfigError(
            f"AOI file {path} (config key 'plan.aoi') cannot be read ({type(exc).__name__}: {exc}); "
            "save it as GeoJSON or GPKG polygons with a CRS"
        ) from exc


def _in_wgs84(frame: gpd.GeoDataFrame, path: Path) -> gpd.GeoDataFrame:
    """`frame` in EPSG:4326; ConfigError when its coordinates do not fit its CRS or cross the antimeridian."""
    try:
        frame = frame.to_crs(4326)
    except Exception as exc:  # pyproj raises its own kinds for a CRS it cannot transform
        raise ConfigError(f"AOI file {path}: its CRS {frame.crs} cannot be turned into lon/lat ({exc})") from exc
    bounds = frame.geometry.bounds.to_numpy(dtype=float)
    rows = ~frame.geometry.is_empty.to_numpy()
    if not np.isfinite(bounds[rows]).all():
        raise ConfigError(f"AOI file {path}: coordinates are not finite in lon/lat; are they in its CRS {frame.crs}?")
    lon0, lat0, lon1, lat1 = bounds[rows, 0].min(), bounds[rows, 1].min(), bounds[rows, 2].max(), bounds[rows, 3].max()
    if lon0 < -180 or lon1 > 180 or lat0 < -80 or lat1 > 84:
        raise ConfigError(
            f"AOI file {path}: lon/lat bounds ({lon0:.3f}, {lat0:.3f}, {lon1:.3f}, {lat1:.3f}) leave UTM's range "
            "(lon -180..180, lat -80..84): check its CRS, and split a polygon across the antimeridian in two (RFC 7946)"
        )
    return frame


def check_tile_count(aoi: shapely.Geometry, tile_size_m: float, path: str = "", max_tiles: int = MAX_TILES) -> None:
    """ConfigError when `aoi`'s bounding box would need over `max_tiles` tiles of `tile_size_m` (a hang, not a run)."""
    lon0, lat0, lon1, lat1 = aoi.bounds
    width_m = (lon1 - lon0) * 111_320 * max(math.cos(math.radians(lat0)), math.cos(math.radians(lat1)), 0.05)
    if lat0 <= 0 <= lat1:
        width_m = (lon1 - lon0) * 111_320
    estimate = (width_m / tile_size_m + 2) * ((lat1 - lat0) * 110_574 / tile_size_m + 2)
    if estimate > max_tiles:
        where = f"AOI {path}" if path else "the AOI"
        raise ConfigError(
            f"{where} spans about {estimate:,.0f} tiles of {tile_size_m:g} m (its bounds {aoi.bounds}); "
            f"a run plans at most {max_tiles:,}: split the AOI into several runs, or raise 'plan.tile_size_m'"
        )


def tile_id_of(epsg: int, core: tuple[float, float, float, float]) -> str:
    """Stable id from the zone and the core's lower-left corner in km, e.g. '32618_436_4162'."""
    return f"{epsg}_{core[0] / 1000:.0f}_{core[1] / 1000:.0f}"


def tile_seed(tile_id: str) -> int:
    """A stable 32-bit seed per tile, for per-tile random streams that do not depend on the run order."""
    return zlib.crc32(tile_id.encode())


def split_aoi(
    aoi: shapely.Geometry, tile_size_m: float, tile_buffer: float, region: str, max_tiles: int = MAX_TILES
) -> list[Tile]:
    """Tiles whose cores cover `aoi` (EPSG:4326), each buffered by `tile_buffer` of its size, neighbours filled in;
    ConfigError when that would be over `max_tiles`."""
    check_tile_count(aoi, tile_size_m, max_tiles=max_tiles)
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
