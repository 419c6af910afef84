"""Curation on the sample: the outputs exist, and the filters remove what the sample source planted.

Only this test (and the benchmark) reads the planted truth (srpipe.curate.truth); curation never does.
"""

import json
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest

from srpipe.config import load_config
from srpipe.curate.quality import SCORE_NAMES
from srpipe.curate.reduce import read_samples
from srpipe.curate.truth import filter_truth
from srpipe.data.shards import SHARD_FIELDS, TILE_FIELDS
from srpipe.layout import RunLayout
from tests.conftest import aoi_geojson, srpipe, tiny_settings, write_config


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("curate-sample")
    aoi = aoi_geojson(base / "aoi.geojson", 440100, 4164100, 443900, 4169900)
    settings = tiny_settings(base / "run", aoi)
    # the demo's noise thresholds; S2 frames up to 15 % cloudy enter the stacks, so that the noise filter has work
    settings["curate"] |= {"noise_min_ssim": 0.3, "noise_min_psnr_db": 17.0, "noise_max_mse_ratio": 30.0}
    settings["curate"] |= {"s2_max_cloud_cover": 0.15}
    settings["source"] |= {"n_vhr_dates": 4, "vhr_cloudy_dates": 2, "cloudy_date_fraction": 0.6}
    config = write_config(base / "tiny.toml", settings)
    for stage in ("plan", "download", "curate"):
        srpipe(stage, str(config))
    return Path(tomllib.loads(config.read_text())["run_dir"])


def test_curate_writes_shards_stats_samples_report_and_plots(curated):
    layout = RunLayout(curated)
    folder = layout.curation
    stats = json.loads(layout.curation_stats.read_text())
    assert {"lr_scale", "hr_scale", "split", "filters", "regions"} <= set(stats)
    report = (folder / "report.md").read_text()
    for png in ("ssim_psnr.png", "blue_histograms.png", "tile_statistics.png", "cloud_cover.png"):
        assert (folder / png).stat().st_size > 10_000 and f"({png})" in report
    f = stats["filters"]
    assert f["shadows"]["in"] == len(read_samples(folder / "samples.csv"))
    assert f["noise"]["kept"] == sum(stats["n_samples"].values())
    with h5py.File(layout.datasets / "train-000.h5") as shard:
        assert {"lr", "hr", "hr_unmatched", "scores", "ref_date", "yx"} <= set(shard)
        assert 0 <= shard["hr"][()].min() and shard["hr"][()].max() <= 1


def test_the_planted_clouds_and_shadows_are_the_ones_removed(curated):
    cfg = load_config(curated)
    rows = read_samples(cfg.layout.curation / "samples.csv")
    per_tile = {t: json.loads(cfg.layout.curated_tile(t)[0].read_text()) for t in cfg_tiles(rows)}
    scores = filter_truth(cfg, rows, per_tile, min_share=0.01)
    assert scores["vhr_clouds"]["precision"] == 1.0  # a removed label frame was truly cloudy
    assert scores["shadows"]["true"] > 0 and scores["shadows"]["recall"] == 1.0  # every shadowed sample is flagged
    noise = scores["noise"]
    assert noise["true"] > 0 and noise["precision"] >= 0.5  # what the noise filter drops mostly carries planted weather
    assert noise["recall"] >= 0.3, noise


def test_tile_files_and_shards_follow_the_one_spec(curated):
    cfg = load_config(curated)
    patch_px, label_px = cfg.curate.lr_patch_px, cfg.curate.lr_patch_px * cfg.source.scale
    sizes = {"K": cfg.curate.n_frames, "h": patch_px, "w": patch_px, "H": label_px, "W": label_px}
    sizes |= {"P": cfg.curate.pixels_per_sample, "S": len(SCORE_NAMES)}
    tile_id = json.loads(cfg.layout.curation_stats.read_text())["tiles_curated"][0]
    with h5py.File(cfg.layout.curated_tile(tile_id)[1]) as f:
        per_tile = {"M": len(f["lr_pixels"]), "L": f["vhr_blue"].shape[0], "B": f["vhr_blue"].shape[1]}
        _assert_follows(f, TILE_FIELDS, sizes | per_tile)
    with h5py.File(cfg.layout.datasets / "train-000.h5") as f:
        _assert_follows(f, SHARD_FIELDS, sizes)


def _assert_follows(f: h5py.File, fields: dict, sizes: dict) -> None:
    assert set(f) == set(fields)
    for key, field in fields.items():
        assert f[key].shape == field.shape({"N": len(f["lr"]), **sizes}), key
        if field.dtype != "S":  # "S": bytes as long as the longest value
            assert f[key].dtype == np.dtype(field.dtype), key


def cfg_tiles(rows: list[dict]) -> list[str]:
    return sorted({r["tile_id"] for r in rows})
