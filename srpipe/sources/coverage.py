"""Which of a grid's tiles a source can deliver whole, from its coverage (`Source.coverage`), for plan."""

from __future__ import annotations

import dataclasses

import geopandas as gpd
import shapely

from srpipe.data.grid import Tile
from srpipe.sources import Source


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


def check_coverage(source: Source, tiles: list[Tile], aoi: shapely.Geometry) -> tuple[list[Tile], str]:
    """(the tiles that `source` covers, a report of the others: '' when none)."""
    coverage = source.coverage(aoi)
    if coverage is None:  # generated anywhere: no footprint to check against
        return tiles, ""
    inside, outside = split_by_coverage(tiles, coverage)
    if not outside:
        return inside, ""
    names = ", ".join(t.tile_id for t in outside[:5]) + (", ..." if len(outside) > 5 else "")
    return inside, f"{len(outside)} of {len(tiles)} tiles lie (partly) outside {source.describe()} ({names})"
