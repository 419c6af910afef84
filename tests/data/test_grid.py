"""Plan: AOI -> overlapping UTM tiles with stable ids and neighbours."""

import json
from collections import Counter
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

from srpipe import state
from srpipe.config import load_config
from srpipe.data.grid import load_aoi, read_grid, split_aoi, tiles_by_id, write_grid
from srpipe.errors import ConfigError
from srpipe.plan.stage import plan
from tests.conftest import DATA, aoi_geojson, write_config


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
    aoi = load_aoi(DATA / "countries" / "LTU.geojson")
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


COUNTRIES = DATA / "countries"
ZONE_STRIPS = {32634: (18.0, 24.0), 32635: (24.0, 30.0), 32636: (30.0, 36.0)}  # UTM north: longitudes of the zone


@pytest.fixture(scope="module")
def country_tiles() -> dict[str, tuple[shapely.Geometry, list]]:
    """{country: (AOI in EPSG:4326, its 2 km tiles)} of the real Lithuania and Cyprus outlines, split once."""
    return {c: (aoi := load_aoi(COUNTRIES / f"{c}.geojson"), split_aoi(aoi, 2000, 0.2, c)) for c in ("LTU", "CYP")}


def test_lithuania_gives_tiles_in_two_zones_each_in_its_own_crs(country_tiles):
    _, tiles = country_tiles["LTU"]
    zones = Counter(t.epsg for t in tiles)
    assert zones == {32634: 8472, 32635: 7939}  # the count with sentinelhub's UtmZoneSplitter
    assert len({t.tile_id for t in tiles}) == len(tiles)
    for epsg in zones:
        cores = [shapely.box(*t.core) for t in tiles if t.epsg == epsg]
        in_4326 = gpd.GeoSeries(cores, crs=epsg).to_crs(4326)
        west, east = ZONE_STRIPS[epsg]
        assert in_4326.intersects(shapely.box(west, 0, east, 84)).all()  # no tile belongs to another zone
        assert all(t.tile_id.startswith(f"{epsg}_") for t in tiles if t.epsg == epsg)


def test_tiles_adjacent_across_the_24e_zone_border_are_neighbours(country_tiles):
    _, tiles = country_tiles["LTU"]
    by_id = {t.tile_id: t for t in tiles}
    for t in tiles:  # neighbours are symmetric, across zones too
        assert all(t.tile_id in by_id[n].neighbours for n in t.neighbours)
    border = shapely.LineString([(24, 53), (24, 57)])
    west = [t for t in tiles if t.epsg == 32634]
    boxes = gpd.GeoSeries([shapely.box(*t.bounds) for t in west], crs=32634).to_crs(4326)
    on_border = [t for t, box in zip(west, boxes, strict=True) if box.intersects(border)]
    assert len(on_border) > 50  # ~200 km of border
    for t in on_border:
        assert any(by_id[n].epsg == 32635 for n in t.neighbours), t.tile_id


@pytest.mark.parametrize("country", ["LTU", "CYP"])
def test_tile_cores_tile_the_aoi_exactly_in_each_zone(country_tiles, country):
    aoi, tiles = country_tiles[country]
    for epsg in sorted({t.epsg for t in tiles}):
        cores = shapely.box(*np.array([t.core for t in tiles if t.epsg == epsg]).T)
        left, right = shapely.STRtree(cores).query(cores, predicate="intersects")
        pairs = left < right
        assert shapely.area(shapely.intersection(cores[left[pairs]], cores[right[pairs]])).sum() == 0  # no overlap
        west, east = ZONE_STRIPS[epsg]
        strip = shapely.segmentize(shapely.box(west, 0, east, 84), 0.05)  # so that the meridians project curved
        part = gpd.GeoSeries([aoi.intersection(strip)], crs=4326).to_crs(epsg).iloc[0]
        gaps = part.difference(shapely.coverage_union_all(cores)).area
        assert gaps < 1e-6 * part.area  # no gap (up to the reprojection of the coarse outline)
        assert shapely.intersects(cores, part.buffer(100)).all()  # and no core off the AOI


def test_a_country_plan_prints_and_returns_its_figures_and_reads_back_the_same_tiles(tmp_path, country_tiles, capsys):
    # the sample source covers one scene, not Lithuania: keep the tiles its coverage check reports (at its 10 m label)
    plan_keys = {"aoi": str(COUNTRIES / "LTU.geojson"), "drop_outside_source": False}
    settings = {"run_dir": str(tmp_path / "run"), "plan": plan_keys, "source": {"lr_resolution_m": 40.0}}
    cfg = load_config(write_config(tmp_path / "ltu.toml", settings))
    figures = plan(cfg)
    assert figures["tiles"] == 16411 and figures["tiles_per_zone"] == {"32634": 8472, "32635": 7939}
    assert figures["core_km2"] == pytest.approx(16411 * 4.0)
    assert 60_000 < figures["aoi_km2"] < figures["core_km2"]  # ~65,300 km^2 in reality; the outline is coarse
    assert figures["output_px_per_band_per_date"] == 16411 * 200 * 200  # 2 km cores at 40 m / 4 = 10 m
    assert figures["output_gb_per_date"] == pytest.approx(16411 * 200 * 200 * 4 * 2 / 1e9)
    printed = capsys.readouterr().out
    assert "16411 tiles (EPSG:32634 8472, EPSG:32635 7939)" in printed
    assert "16411 of 16411 tiles lie (partly) outside the sample scene" in printed
    assert read_grid(cfg.run_path) == country_tiles["LTU"][1]
    first = country_tiles["LTU"][1][0]
    assert tiles_by_id(cfg.run_path)[first.tile_id] == first


def test_re_planning_keeps_the_grid_and_refuses_other_plan_settings(tmp_path):
    aoi = aoi_geojson(tmp_path / "a.geojson", 440100, 4164100, 443900, 4165900)
    settings = {"run_dir": str(tmp_path / "run"), "plan": {"aoi": str(aoi)}, "source": {"lr_resolution_m": 40.0}}
    cfg = load_config(write_config(tmp_path / "a.toml", settings))
    first = plan(cfg)
    version = state.file_version(cfg.layout.grid)
    assert plan(cfg) == first and state.file_version(cfg.layout.grid) == version
    settings["plan"]["tile_size_m"] = 1000.0
    with pytest.raises(ConfigError, match=r"other \[plan\] settings"):
        plan(load_config(write_config(tmp_path / "b.toml", settings)))


def _write_geometry(path: Path, geometry: dict) -> Path:
    feature = {"type": "Feature", "properties": {}, "geometry": geometry}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


def test_a_self_intersecting_aoi_is_repaired_with_a_warning_not_called_arealess(tmp_path):
    bow_tie = [[14.50, 46.00], [14.60, 46.10], [14.60, 46.00], [14.50, 46.10], [14.50, 46.00]]  # crosses itself
    path = _write_geometry(tmp_path / "bow.geojson", {"type": "Polygon", "coordinates": [bow_tie]})
    assert shapely.Polygon(bow_tie).area == 0  # shapely's area of the invalid ring: what "no area" was
    with pytest.warns(UserWarning, match=r"invalid geometry \(Self-intersection.*repaired with shapely.make_valid"):
        aoi = load_aoi(path)
    assert aoi.is_valid and aoi.area == pytest.approx(0.005, rel=1e-6)  # the two triangles of the bow tie


def test_an_aoi_of_lines_is_refused_naming_what_it_holds(tmp_path):
    path = _write_geometry(
        tmp_path / "line.geojson", {"type": "LineString", "coordinates": [[14.5, 46.0], [14.6, 46.1]]}
    )
    with pytest.raises(ConfigError, match="holds only LineString .no area.: the AOI must be a polygon"):
        load_aoi(path)
