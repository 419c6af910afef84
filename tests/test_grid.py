"""Plan: AOI -> overlapping UTM tiles with stable ids and neighbours."""

import json

import geopandas as gpd
import pytest
import shapely

from srpipe.errors import ConfigError
from srpipe.grid import load_aoi, read_grid, split_aoi, write_grid
from tests.conftest import SHARED, aoi_geojson


def test_demo_sized_aoi_gives_4x4_buffered_tiles_with_neighbours(tmp_path):
    aoi = load_aoi(aoi_geojson(tmp_path / "a.geojson", 440100, 4164100, 447900, 4171900))
    tiles = split_aoi(aoi, 2000, 0.2, "demo")
    assert len(tiles) == 16
    assert {t.epsg for t in tiles} == {32618}
    for t in tiles:
        assert t.bounds[2] - t.bounds[0] == pytest.approx(2400)  # 2 km core + 0.2 buffer
        assert t.bounds[0] == pytest.approx(t.core[0] - 200)
    by_id = {t.tile_id: t for t in tiles}
    assert len(by_id["32618_440_4164"].neighbours) == 3  # a corner
    assert len(by_id["32618_442_4166"].neighbours) == 8  # inside
    assert "32618_442_4166" in by_id["32618_440_4164"].neighbours


def test_grid_round_trips_through_geopackage(tmp_path):
    tiles = split_aoi(load_aoi(aoi_geojson(tmp_path / "a.geojson", 440100, 4164100, 443900, 4165900)), 2000, 0.2, "r")
    (tmp_path / "run").mkdir()
    write_grid(tiles, tmp_path / "run" / "grid.gpkg")
    assert read_grid(tmp_path / "run") == tiles


def test_country_spanning_two_utm_zones_is_split_per_zone():
    aoi = load_aoi(SHARED / "fixtures" / "countries" / "LTU.geojson")
    tiles = split_aoi(aoi, 20000, 0.2, "LTU")  # 20 km tiles keep the test fast; the logic is the same
    assert {t.epsg for t in tiles} == {32634, 32635}
    assert len({t.tile_id for t in tiles}) == len(tiles)
    covered = gpd.GeoSeries([shapely.box(*t.core) for t in tiles if t.epsg == 32634], crs=32634).to_crs(4326)
    assert covered.unary_union.intersects(aoi)


def test_empty_aoi_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(ConfigError, match="holds no geometry"):
        load_aoi(path)


def test_missing_aoi_file_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="plan.aoi"):
        load_aoi(tmp_path / "nope.geojson")
