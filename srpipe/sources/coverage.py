"""What a source can deliver, for plan: the sample scene's footprint, the BYOC label collection's catalog coverage;
the synthetic source covers the whole world."""

from __future__ import annotations

import dataclasses

import geopandas as gpd
import rasterio
import shapely

from srpipe.config import Config
from srpipe.grid import Tile


def source_coverage(cfg: Config, aoi: shapely.Geometry) -> tuple[gpd.GeoSeries, str]:
    """(one geometry with its CRS, a description) of where `cfg.source` delivers whole tiles over `aoi` (EPSG:4326)."""
    if cfg.source.name == "sample":
        from srpipe.sources.sample import SampleSource

        source = SampleSource(cfg.source)
        with rasterio.open(source.files[0]) as src:
            footprint, crs = shapely.box(*src.bounds), src.crs
        return gpd.GeoSeries([footprint], crs=crs), f"the sample scene {source.folder}"
    from sentinelhub import CRS, BBox

    from srpipe.sources.sentinelhub import SentinelHubSource, vhr_interval

    source = SentinelHubSource(cfg.source)
    items = source.search(source.vhr, BBox(aoi.bounds, CRS.WGS84), vhr_interval(cfg.source), None)
    shapes = [shapely.geometry.shape(item["geometry"]) for item in items]
    union = shapely.union_all(shapes) if shapes else shapely.Polygon()
    return gpd.GeoSeries([union], crs=4326), f"the labels of BYOC collection {cfg.source.vhr_collection_id}"


def split_by_coverage(tiles: list[Tile], coverage: gpd.GeoSeries) -> tuple[list[Tile], list[Tile]]:
    """(tiles whose whole buffered box lies inside `coverage`, the others); kept tiles' neighbours stay among them."""
    in_zone: dict[int, shapely.Geometry] = {}
    inside, outside = [], []
    for tile in tiles:
        if tile.epsg not in in_zone:
            in_zone[tile.epsg] = coverage.to_crs(tile.epsg).iloc[0].buffer(0.01)  # centimetres of rounding
        (inside if in_zone[tile.epsg].contains(shapely.box(*tile.bounds)) else outside).append(tile)
    kept = {t.tile_id for t in inside}
    inside = [dataclasses.replace(t, neighbours=tuple(n for n in t.neighbours if n in kept)) for t in inside]
    return inside, outside


def check_coverage(cfg: Config, tiles: list[Tile], aoi: shapely.Geometry) -> tuple[list[Tile], str]:
    """(the tiles that the source covers, a report of the others: '' when none)."""
    if cfg.source.name == "synthetic":  # generated anywhere: no footprint to check against
        return tiles, ""
    coverage, what = source_coverage(cfg, aoi)
    inside, outside = split_by_coverage(tiles, coverage)
    if not outside:
        return inside, ""
    names = ", ".join(t.tile_id for t in outside[:5]) + (", ..." if len(outside) > 5 else "")
    return inside, f"{len(outside)} of {len(tiles)} tiles lie (partly) outside {what} ({names})"
