"""Plan: AOI polygon -> overlapping UTM tiles (sentinelhub's UtmZoneSplitter), with neighbours, in `grid.gpkg`."""

from __future__ import annotations

import dataclasses
import functools
import tomllib
import zlib
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import shapely
from sentinelhub import CRS, BBox, UtmZoneSplitter

from srpipe import state
from srpipe.config import Config, config_to_dict, dump_config
from srpipe.errors import ConfigError, StageError


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
    splitter = UtmZoneSplitter([aoi], CRS.WGS84, tile_size_m)
    tiles = []
    for bbox in splitter.get_bbox_list():
        epsg = int(bbox.crs.epsg)
        core = tuple(float(v) for v in bbox)
        bounds = tuple(float(v) for v in bbox.buffer(tile_buffer))
        tiles.append(Tile(tile_id_of(epsg, core), epsg, bounds, core, region))
    if not tiles:
        return []
    frame = _footprints(tiles)
    pairs = gpd.sjoin(frame, frame, predicate="intersects")
    pairs = pairs[pairs.index != pairs["index_right"]]
    neighbours: dict[str, list[str]] = {t.tile_id: [] for t in tiles}
    for left, right in zip(pairs["tile_id_left"], pairs["tile_id_right"], strict=True):
        neighbours[left].append(right)
    return [dataclasses.replace(t, neighbours=tuple(sorted(neighbours[t.tile_id]))) for t in tiles]


def _footprints(tiles: list[Tile]) -> gpd.GeoDataFrame:
    """Buffered tile boxes in EPSG:4326, one row per tile."""
    geoms = [gpd.GeoSeries([shapely.box(*t.bounds)], crs=t.epsg).to_crs(4326).iloc[0] for t in tiles]
    return gpd.GeoDataFrame({"tile_id": [t.tile_id for t in tiles]}, geometry=geoms, crs=4326)


def write_grid(tiles: list[Tile], path: Path) -> None:
    """Write `tiles` to a GeoPackage (EPSG:4326 footprints; UTM bounds and core as columns)."""
    frame = _footprints(tiles)
    frame["epsg"] = [t.epsg for t in tiles]
    frame["region"] = [t.region for t in tiles]
    frame["neighbours"] = [",".join(t.neighbours) for t in tiles]
    for i, name in enumerate(("minx", "miny", "maxx", "maxy")):
        frame[f"bounds_{name}"] = [t.bounds[i] for t in tiles]
        frame[f"core_{name}"] = [t.core[i] for t in tiles]
    with state.atomic_path(path) as tmp:
        frame.to_file(tmp, driver="GPKG", layer="tiles")


def read_grid(run_dir: str | Path) -> list[Tile]:
    """Tiles of a planned run, in grid order (read once per process while grid.gpkg is unchanged)."""
    path = Path(run_dir) / "grid.gpkg"
    if not path.exists():
        raise StageError(f"{path} does not exist; run `srpipe plan` first")
    return list(_read_grid_file(str(path.resolve()), *state.file_version(path)))


@functools.lru_cache(maxsize=4)
def _read_grid_file(path: str, inode: int, mtime_ns: int) -> tuple[Tile, ...]:
    """Tiles of one grid.gpkg version; inode and mtime key the cache, so a re-planned grid is read anew."""
    frame = gpd.read_file(path, layer="tiles")
    return tuple(
        Tile(
            tile_id=row.tile_id,
            epsg=int(row.epsg),
            bounds=(row.bounds_minx, row.bounds_miny, row.bounds_maxx, row.bounds_maxy),
            core=(row.core_minx, row.core_miny, row.core_maxx, row.core_maxy),
            region=row.region,
            neighbours=tuple(n for n in row.neighbours.split(",") if n),
        )
        for row in frame.itertuples()
    )


def tiles_by_id(run_dir: str | Path) -> dict[str, Tile]:
    """{tile_id: Tile} of a planned run."""
    return {t.tile_id: t for t in read_grid(run_dir)}


def plan(cfg: Config) -> dict:
    """Write `config.toml` and `grid.gpkg` into the run directory; refuse to re-plan a run with another grid."""
    run = cfg.run_path
    run.mkdir(parents=True, exist_ok=True)
    stored = run / "config.toml"
    if stored.exists() and (run / "grid.gpkg").exists():
        old = tomllib.loads(stored.read_text())
        new = config_to_dict(cfg)
        for key in ("plan", "source"):
            if old.get(key) != new[key]:
                raise ConfigError(
                    f"run directory {run} was planned with other [{key}] settings; "
                    "use a new run_dir (or delete this one) to change the grid or the source"
                )
        state.write_text(stored, dump_config(cfg))
        return {"tiles": len(read_grid(run))}
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
    state.write_text(stored, dump_config(cfg))
    write_grid(tiles, run / "grid.gpkg")
    return {"tiles": len(tiles)}
