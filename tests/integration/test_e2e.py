"""The whole chain in local mode on a tiny run of the sample: outputs, faults, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from eolearn.core import EOPatch, OverwritePermission
from rasterio.features import geometry_mask

from srpipe import eopatch as ep
from srpipe.data.grid import load_aoi
from srpipe.data.s2units import from_dn
from tests.conftest import aoi_geojson, srpipe, tiny_settings, write_config
from tests.helpers import copy_run

pytestmark = pytest.mark.slow


def run_dir_of(config: Path) -> Path:
    return Path(tomllib.loads(config.read_text())["run_dir"])


def test_mosaic_is_a_georeferenced_cog_covering_the_aoi_without_gaps(tiny_run):
    run = run_dir_of(tiny_run)
    mosaic = run / "mosaics" / "tiny_2016-10-31_32618.tif"
    with rasterio.open(mosaic) as src:
        assert src.crs.to_epsg() == 32618
        assert src.res == (10.0, 10.0)  # the label grid of the sample (the 2.5 m analogue)
        assert src.overviews(1), "COG without overviews"
        assert src.dtypes[0] == "uint16" and src.nodata == 0 and src.scales[0] == 1e-4  # S2 DN
        data = from_dn(src.read())
        bounds, transform = src.bounds, src.transform
    aoi = load_aoi(tiny_run.parent / "aoi.geojson")
    from pyproj import Transformer

    x, y = Transformer.from_crs(4326, 32618, always_xy=True).transform(*aoi.exterior.xy)
    assert bounds.left <= min(x) and bounds.right >= max(x) and bounds.bottom <= min(y) and bounds.top >= max(y)
    inside = ~geometry_mask([shapely.Polygon(zip(x, y, strict=True))], data.shape[1:], transform, all_touched=False)
    assert not np.isnan(data[:, inside]).any(), "gaps in the mosaic inside the AOI"
    assert np.isnan(data[:, ~inside]).all(), "values outside the AOI"
    assert 0.01 < np.nanmedian(data) < 0.5  # reflectance, not normalised values
    with rasterio.open(run / "mosaics" / "tiny_2016-10-31.vrt") as vrt:
        np.testing.assert_allclose(from_dn(vrt.read()), data, atol=0.02)  # the VRT shows the same mosaic
    stac = json.loads((run / "mosaics" / "stac" / "collection.json").read_text())
    assert stac["type"] == "Collection" and any(link["rel"] == "item" for link in stac["links"])


def test_tile_overlaps_are_cut_so_the_mosaic_has_no_seams(tiny_run):
    run = run_dir_of(tiny_run)
    with rasterio.open(run / "mosaics" / "tiny_2016-10-31_32618.tif") as src:
        data = src.read(3).astype(float)
    # jumps across the tile borders (every 200 px) are no larger than jumps elsewhere
    cols = np.abs(np.diff(data, axis=1))
    border = cols[:, 199].mean()
    assert border < 3 * np.median(cols.mean(axis=0))


def test_predictions_are_cogs_on_the_label_grid_of_their_tile(tiny_run):
    run = run_dir_of(tiny_run)
    tifs = sorted((run / "predictions" / "highresnet").glob("*/2016-10-31.tif"))
    assert len(tifs) == 6
    with rasterio.open(tifs[0]) as src:
        assert (src.width, src.height) == (240, 240) and src.crs.to_epsg() == 32618
        assert src.descriptions == ("B02", "B03", "B04", "B08")
        assert len(src.tags()["frames"].split(",")) <= 4


def test_metrics_json_keeps_its_shape(tiny_run):
    metrics = json.loads((run_dir_of(tiny_run) / "reports" / "metrics.json").read_text())
    assert set(metrics) >= {"sr", "bicubic", "n_samples", "per_tile"}
    assert set(metrics["sr"]) >= {"psnr", "ssim"} and set(metrics["bicubic"]) >= {"psnr", "ssim"}
    assert metrics["n_samples"] > 0 and metrics["per_tile"][0]["n_samples"] > 0
    assert 10 < metrics["bicubic"]["psnr"] < 40
    # SR of whole test tiles, scored on their cores (what mosaics keep), and the downstream delineation test
    assert metrics["tile_cores"]["n"] > 0 and metrics["tile_cores"]["n_tiles"] >= 1
    assert metrics["mcc"]["methods"]["sr"]["mcc_extent"] is not None
    assert (run_dir_of(tiny_run) / "reports" / "index.html").stat().st_size > 10_000


def test_a_rerun_skips_everything_and_changes_nothing(tiny_run, tmp_path):
    run = copy_run(run_dir_of(tiny_run), tmp_path / "run")  # the session's run is read-only
    mosaic = run / "mosaics" / "tiny_2016-10-31_32618.tif"
    before = mosaic.stat().st_mtime_ns
    out = srpipe("run", str(run)).stdout
    assert "download: 0 done, 6 skipped" in out and "train: 0 done, 1 skipped" in out
    assert mosaic.stat().st_mtime_ns == before


def _tiny(tmp_path: Path, **overrides) -> Path:
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 440100, 4164100, 443900, 4169900)
    settings = tiny_settings(tmp_path / "run", aoi)
    for section, values in overrides.items():
        settings[section] = {**settings.get(section, {}), **values}
    return write_config(tmp_path / "tiny.toml", settings)


def test_corrupt_eopatch_fails_its_tile_only_and_the_run_goes_on(tmp_path):
    config = _tiny(tmp_path)
    srpipe("plan", str(config))
    srpipe("download", str(config))
    victim = "32618_440_4166"
    (tmp_path / "run" / "eopatches" / victim / "data" / "S2_BANDS.npy.gz").write_bytes(b"\x1f\x8b\x08 cut short")
    result = srpipe("curate", str(config), check=False)
    assert result.returncode == 1
    assert f"FAILED {victim}: TileError: tile {victim}: EOPatch at" in result.stdout
    assert "curate: 5 done" in result.stdout and "curate-reduce: 1 done" in result.stdout
    report = (tmp_path / "run" / "curation" / "report.md").read_text()
    assert victim in report and "tiles curated: 5; failed: 1" in report


def test_an_all_cloudy_stack_is_a_clear_error_naming_the_tile(tmp_path):
    config = _tiny(tmp_path)
    srpipe("plan", str(config))
    srpipe("download", str(config), "--tiles", "32618_440_4164,32618_442_4164")
    folder = str(ep.patch_dir(tmp_path / "run", "32618_440_4164"))
    patch = EOPatch.load(folder)
    patch[ep.S2_CLOUDS] = np.ones_like(patch[ep.S2_CLOUDS])  # every frame of the stack is cloud
    patch.save(folder, overwrite_permission=OverwritePermission.OVERWRITE_FEATURES)
    result = srpipe("curate", str(config), "--map-only", "--tiles", "32618_440_4164,32618_442_4164", check=False)
    assert result.returncode == 1
    assert "tile 32618_440_4164: all 16 S2 frames are cloudier than curate.s2_max_cloud_cover=0.05" in result.stdout
    assert "curate: 1 done" in result.stdout


def test_an_aoi_outside_every_tile_and_a_wrong_key_are_clear_errors(tmp_path):
    far = aoi_geojson(tmp_path / "far.geojson", 600100, 4164100, 601900, 4165900)  # east of the scene
    settings = tiny_settings(tmp_path / "run", far)
    settings["plan"]["drop_outside_source"] = False  # plan would drop every tile: check download's own error
    config = write_config(tmp_path / "far.toml", settings)
    srpipe("plan", str(config))
    result = srpipe("download", str(config), check=False)
    assert result.returncode == 1 and "lies (partly) outside the sample scene" in result.stdout
    settings = tiny_settings(tmp_path / "run2", far)
    settings["infer"]["window"] = 3
    bad = write_config(tmp_path / "bad.toml", settings)
    result = srpipe("run", str(bad), check=False)
    assert result.returncode == 2 and "unknown config key 'infer.window'" in result.stderr


def test_killed_run_resumes_and_ends_with_the_same_mosaic(tiny_run, tmp_path):
    config = _tiny(tmp_path)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "srpipe", "run", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    state = tmp_path / "run" / "_state"
    deadline = time.time() + 300
    while time.time() < deadline and len(list((state / "curate").glob("*.done"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, pool workers included
    proc.wait()
    assert not (tmp_path / "run" / "mosaics").exists()
    out = srpipe("run", str(config)).stdout
    assert "download: 0 done, 6 skipped" in out
    with (
        rasterio.open(tmp_path / "run" / "mosaics" / "tiny_2016-10-31_32618.tif") as a,
        rasterio.open(run_dir_of(tiny_run) / "mosaics" / "tiny_2016-10-31_32618.tif") as b,
    ):
        np.testing.assert_array_equal(a.read(), b.read())
