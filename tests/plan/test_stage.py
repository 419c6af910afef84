"""Plan from the command line: the defaults plan on their own, an AOI outside the source is an error that says what
to choose, and configuration errors exit 2 wherever they are found."""

from __future__ import annotations

import json
import tomllib

from tests.conftest import aoi_geojson, srpipe, write_config


def test_a_config_with_only_run_dir_and_aoi_plans_on_the_sample_at_its_own_resolution(tmp_path):
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 440100, 4164100, 441900, 4165900)
    config = write_config(tmp_path / "c.toml", {"run_dir": str(tmp_path / "run"), "plan": {"aoi": str(aoi)}})
    result = srpipe("plan", str(config))
    assert "plan: 1 tiles" in result.stdout
    resolved = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert resolved["source"]["lr_resolution_m"] == 40.0  # the sample's 10 m scene x scale 4, derived at plan
    assert srpipe("plan", str(config)).returncode == 0  # a re-plan of the same config keeps the grid


def test_an_aoi_outside_the_sample_exits_2_naming_its_bounds_the_coverage_and_the_sources_to_choose(tmp_path):
    aoi = aoi_geojson(tmp_path / "ltu.geojson", 500100, 6100100, 501900, 6101900, epsg=32634)  # central Lithuania
    config = write_config(tmp_path / "c.toml", {"run_dir": str(tmp_path / "run"), "plan": {"aoi": str(aoi)}})
    result = srpipe("plan", str(config), check=False)
    assert result.returncode == 2, result.stderr
    assert "(lon/lat 21.00" in result.stderr and "55.04" in result.stderr  # the AOI's bounds
    assert "the sample scene" in result.stderr and " covers lon/lat " in result.stderr  # the source's coverage
    assert "source.name = 'sentinelhub'" in result.stderr and "'synthetic'" in result.stderr  # what to choose


def test_a_synthetic_run_of_only_run_dir_aoi_and_source_plans_anywhere_and_curate_says_it_needs_labels(tmp_path):
    aoi = aoi_geojson(tmp_path / "ltu.geojson", 500100, 6100100, 501900, 6101900, epsg=32634)
    settings = {"run_dir": str(tmp_path / "run"), "plan": {"aoi": str(aoi)}, "source": {"name": "synthetic"}}
    config = write_config(tmp_path / "c.toml", settings)
    srpipe("plan", str(config))
    resolved = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert resolved["source"]["lr_resolution_m"] == 10.0  # Sentinel-2's own pixels
    result = srpipe("curate", str(config), check=False)
    assert result.returncode == 2
    assert "curate, curate-reduce need labels, and the synthetic source" in result.stderr


def test_configuration_errors_exit_2_at_load_and_at_plan(tmp_path):
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 440100, 4164100, 441900, 4165900)
    unknown = write_config(tmp_path / "u.toml", {"run_dir": str(tmp_path / "u"), "plan": {"aoi": str(aoi), "x": 1}})
    result = srpipe("run", str(unknown), check=False)
    assert result.returncode == 2 and "unknown config key 'plan.x'" in result.stderr
    wrong = {"run_dir": str(tmp_path / "w"), "plan": {"aoi": str(aoi)}, "source": {"lr_resolution_m": 10.0}}
    result = srpipe("plan", str(write_config(tmp_path / "w.toml", wrong)), check=False)
    assert result.returncode == 2 and "'source.lr_resolution_m' must be 40" in result.stderr
    lines = {"type": "LineString", "coordinates": [[-77.5, 37.63], [-77.4, 37.64]]}
    feature = {"type": "Feature", "properties": {}, "geometry": lines}
    (tmp_path / "line.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    arealess = {"run_dir": str(tmp_path / "l"), "plan": {"aoi": str(tmp_path / "line.geojson")}}
    result = srpipe("plan", str(write_config(tmp_path / "l.toml", arealess)), check=False)
    assert result.returncode == 2 and "holds only LineString" in result.stderr
