"""`srpipe adapt`: the region's own S2 as a Wald scene (a composite of the run's tiles), the recipe the weights came
with, and the whole command on a native run without labels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from srpipe import eopatch as ep
from srpipe.config import load_config
from srpipe.data.grid import read_grid
from srpipe.data.s2units import to_dn
from srpipe.training.adapt import WALD_CURATE, _latest_clear, composite_scene, recipe_overrides
from srpipe.weights import weights_path
from tests.conftest import REPO, aoi_geojson, srpipe, write_config
from tests.helpers import crop_scene, final_states, wait_jobs


def test_the_composite_holds_each_tile_core_from_its_latest_clear_frame(tiny_run, tmp_path):
    """Every tile's core pixel (its first) from the tile's latest clear frame; the boxes' buffers fill the edges."""
    cfg = load_config(tiny_run.parent / "run")
    folder = composite_scene(cfg, tmp_path / "composite")
    res = cfg.source.lr_resolution_m
    with rasterio.open(folder / "B02.tif") as src:
        assert src.res == (res, res) and src.crs.to_epsg() == read_grid(cfg.run_path)[0].epsg
        image, transform = src.read(1), src.transform
    for tile in read_grid(cfg.run_path):
        patch = ep.load_patch(cfg.run_path, tile.tile_id, cfg.source.scale)
        t = _latest_clear(patch, cfg.curate.s2_max_cloud_cover)
        assert t is not None and patch[ep.S2_CLOUDS][t].mean() <= cfg.curate.s2_max_cloud_cover
        row, col = ~transform * (tile.core[0] + res / 2, tile.core[3] - res / 2)
        cx, cy = round((tile.core[0] - tile.bounds[0]) / res), round((tile.bounds[3] - tile.core[3]) / res)
        expected = to_dn(patch[ep.S2_BANDS][t, cy, cx, :1])[0]
        assert image[int(col), int(row)] == expected, tile.tile_id
    assert (image > 0).all()  # the cores tile the grid's extent without a gap


def test_packaged_weights_bring_their_recipe_and_a_run_without_labels_gets_wald_curation(tiny_run):
    cfg = load_config(tiny_run.parent / "run")
    packaged = weights_path("sample-x4")
    recipe = json.loads(packaged.with_suffix(".json").read_text())["recipe"]
    overrides = recipe_overrides(cfg, packaged, has_labels=False)
    assert overrides["model"] == recipe["model"] and overrides["loss"] == recipe["loss"]
    assert overrides["curate"] == WALD_CURATE
    season = {"native": False, "lr_resolution_m": 0.0, "n_dates": 24, "time_interval": ("2016-05-01", "2016-10-31")}
    assert season.items() <= overrides["source"].items()  # the sample's season, S2 at scale x the region's pixels
    own = recipe_overrides(cfg, tiny_run.parent / "run/models/highresnet/model.pt", has_labels=True)
    assert own == {"source": {"native": False}}  # a run's own model: its own settings, its own curation


ADAPT_MINUTES = 0.2


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_adapt_on_slurm_fine_tunes_the_packaged_weights_on_a_native_run_and_infer_runs_them(tmp_path: Path):
    """A native run (the scene's own 10 m is S2; no labels) inferring with the packaged weights: after `srpipe
    download`, slurm/adapt.sbatch (`srpipe adapt` as one job) composites the tiles, fine-tunes the weights there by
    the Wald protocol for [adapt] max_minutes, and installs models/adapted/model.pt, which `srpipe infer` then runs."""
    scene = crop_scene(tmp_path / "scene", (440000, 4168000, 452000, 4178000))  # 4 x 3 whole tiles
    recipe = json.loads(weights_path("sample-x4").with_suffix(".json").read_text())["recipe"]
    settings = {
        "run_dir": str(tmp_path / "run"),
        "plan": {"aoi": str(aoi_geojson(tmp_path / "aoi.geojson", 442100, 4170100, 449900, 4175900))},
        "source": {"scene": str(scene), "native": True, "lr_resolution_m": 10.0, "n_dates": 8,
                   "time_interval": ["2016-01-05", "2016-01-12"]},
        "model": recipe["model"],
        "infer": {"model": "sample-x4", "self_ensemble": False},
        "delineation": {"epochs": 1, "channels": 8, "max_samples": 64},
        "adapt": {"max_minutes": ADAPT_MINUTES},
    }  # fmt: skip
    config = write_config(tmp_path / "native.toml", settings)
    srpipe("plan", str(config))
    srpipe("download", str(config))
    run = tmp_path / "run"
    env = {**os.environ, "RUN_DIR": str(run), "SRPIPE_PYTHON": sys.executable}
    cmd = ["sbatch", "--parsable", f"--chdir={tmp_path}", str(REPO / "slurm/adapt.sbatch")]
    job = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout.strip().split(";")[0]
    wait_jobs([job], timeout_s=600)
    out = (tmp_path / f"srpipe-srpipe-adapt-{job}.out").read_text()
    assert final_states([job]).strip().endswith("|COMPLETED"), out
    record = json.loads((run / "models/adapted/adapted.json").read_text())
    assert record["seconds"] <= ADAPT_MINUTES * 60 + 30, record  # the budget, plus setup and validation
    assert record["from_weights"] == str(weights_path("sample-x4")) and record["last_epoch"]["val_cpsnr"] > 0
    assert "infer.model" in out and (run / "adapt/composite/B02.tif").exists()
    adapted = run / "models/adapted/model.pt"
    assert not np.allclose(*(torch.load(p, weights_only=False)["model"]["decoder.net.0.weight"].float()
                             for p in (adapted, weights_path("sample-x4"))))  # fmt: skip
    settings["infer"]["model"] = str(adapted)
    write_config(tmp_path / "native.toml", settings)
    tile = read_grid(run)[0].tile_id
    srpipe("infer", str(config), "--tiles", tile)
    assert list((run / "predictions").glob(f"*/{tile}/*.tif"))
