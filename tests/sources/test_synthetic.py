"""The synthetic source: seeded S2 stacks from world coordinates; seamless across tiles; nothing to download."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from srpipe.config import Config, SourceConfig, load_config
from srpipe.data.grid import Tile, load_aoi, read_grid, split_aoi
from srpipe.download import download_tile
from srpipe.errors import TileError
from srpipe.plan.stage import plan
from srpipe.sources.synthetic.source import cloudy_dates, synthetic_dates, synthetic_stack
from tests.conftest import REPO, aoi_geojson, write_config

CFG = SourceConfig(name="synthetic", lr_resolution_m=40.0, n_dates=8, time_interval=("2020-05-01", "2020-10-31"))


def tile(x: float = 502000, y: float = 6204000, epsg: int = 32634) -> Tile:
    core = (x, y, x + 2000, y + 2000)
    return Tile(f"{epsg}_{x / 1000:.0f}_{y / 1000:.0f}", epsg, (x - 200, y - 200, x + 2200, y + 2200), core, "t")


def test_a_2400_m_tile_at_40_m_is_8_frames_of_60x60_float32_in_four_bands_on_the_tiles_box():
    stack = synthetic_stack(CFG, tile())
    assert stack.s2.shape == (8, 60, 60, 4) and stack.s2.dtype == np.float32
    assert stack.valid.shape == stack.clouds.shape == (8, 60, 60)
    assert stack.valid.dtype == stack.clouds.dtype == bool and stack.valid.all()
    assert stack.bounds == tile().bounds and stack.epsg == 32634
    assert stack.dates == list(synthetic_dates(CFG))
    assert stack.dates[0] == dt.date(2020, 5, 1) and stack.dates[-1] == dt.date(2020, 10, 31)


def test_values_are_plausible_top_of_atmosphere_reflectances_in_band_order_b02_b03_b04_b08():
    stack = synthetic_stack(CFG, tile())
    clear = stack.s2[~stack.clouds]  # (n, 4)
    assert np.isfinite(stack.s2).all() and 0 < clear.min() and stack.s2.max() < 0.7
    blue, green, red, nir = np.median(clear, axis=0)
    assert 0.03 <= blue <= 0.08 and blue < green and 0.15 <= nir <= 0.45 and nir > 2 * red  # vegetated land
    assert clear.std(axis=0).min() > 0.005  # parcels, not a flat colour


def test_the_same_config_gives_the_same_arrays_and_another_seed_others():
    a, b = synthetic_stack(CFG, tile()), synthetic_stack(CFG, tile())
    np.testing.assert_array_equal(a.s2, b.s2)
    np.testing.assert_array_equal(a.clouds, b.clouds)
    other = synthetic_stack(dataclasses.replace(CFG, seed=1), tile())
    assert not np.array_equal(a.s2, other.s2)


@pytest.mark.parametrize("resolution_m", [40.0, 80.0])
def test_neighbouring_tiles_agree_exactly_on_their_overlap(resolution_m):
    cfg = dataclasses.replace(CFG, lr_resolution_m=resolution_m, cloudy_date_fraction=1.0)
    k = round(400 / resolution_m)  # the 400 m that two neighbouring 2.4 km boxes share
    a, east, north = (
        synthetic_stack(cfg, tile()),
        synthetic_stack(cfg, tile(504000)),
        synthetic_stack(cfg, tile(y=6206000)),
    )
    np.testing.assert_array_equal(a.s2[:, :, -k:], east.s2[:, :, :k])
    np.testing.assert_array_equal(a.clouds[:, :, -k:], east.clouds[:, :, :k])
    np.testing.assert_array_equal(a.s2[:, :k], north.s2[:, -k:])
    np.testing.assert_array_equal(a.clouds[:, :k], north.clouds[:, -k:])


def test_clouds_fall_on_about_cloudy_date_fraction_of_the_dates_and_are_bright():
    cfg = dataclasses.replace(CFG, n_dates=20, cloudy_date_fraction=0.35)
    assert len(cloudy_dates(cfg)) == 7
    stacks = [synthetic_stack(cfg, tile(502000 + 2000 * i, 6204000 + 2000 * j)) for i in range(6) for j in range(6)]
    clouds = np.concatenate([s.clouds for s in stacks], axis=1)  # (T, 36 x 60, 60): a 12 km x 12 km area
    with_clouds = set(np.flatnonzero(clouds.any(axis=(1, 2))).tolist())
    assert with_clouds == set(cloudy_dates(cfg))
    s2 = np.concatenate([s.s2 for s in stacks], axis=1)
    assert s2[..., 0][clouds].mean() > s2[..., 0][~clouds].mean() + 0.2  # cloud: bright in blue


def test_a_box_of_fractional_pixels_names_the_tile_and_the_key():
    with pytest.raises(TileError, match=r"tile 32634_502_6204: .*source.lr_resolution_m = 70 m"):
        synthetic_stack(dataclasses.replace(CFG, lr_resolution_m=70.0), tile())


def _synthetic_config(tmp_path: Path, aoi: Path) -> Config:
    settings = {
        "run_dir": str(tmp_path / "run"),
        "plan": {"aoi": str(aoi), "region": "syn"},
        "source": {"name": "synthetic", "lr_resolution_m": 80.0, "n_dates": 4},
    }
    return load_config(write_config(tmp_path / "syn.toml", settings))


def test_plan_keeps_every_tile_of_an_aoi_anywhere_and_download_writes_no_eopatch(tmp_path, capsys):
    # a 6 km x 4 km box in Lithuania (UTM 34N), far from the sample scene: synthetic covers it all
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 500100, 6200100, 505900, 6203900, epsg=32634)
    cfg = _synthetic_config(tmp_path, aoi)
    plan(cfg)
    tiles = read_grid(cfg.run_path)
    assert len(tiles) == len(split_aoi(load_aoi(aoi), 2000.0, 0.2, "syn")) == 6
    assert "outside" not in capsys.readouterr().out
    record = download_tile(cfg, tiles[0].tile_id)
    assert record == {"s2_frames": 4, "s2_shape": [30, 30], "synthetic": True}
    assert not cfg.layout.eopatch(tiles[0].tile_id).exists()


@pytest.mark.parametrize("name", ["lithuania-dry-run", "cyprus-dry-run"])
def test_the_dry_run_configs_load_and_their_model_section_fits_the_packaged_weights(name):
    import torch

    from srpipe.models.pretrained import SHAPE_KEYS
    from srpipe.weights import weights_path

    cfg = load_config(REPO / "configs" / f"{name}.toml")
    assert cfg.source.name == "synthetic" and Path(cfg.plan.aoi).is_file()
    saved = torch.load(weights_path(cfg.infer.model), weights_only=False, map_location="cpu")
    assert {k: getattr(cfg.model, k) for k in SHAPE_KEYS} == {k: saved["model_config"][k] for k in SHAPE_KEYS}
    assert saved["scale"] == cfg.source.scale and saved["n_frames"] == cfg.infer.n_frames
    assert (2400 / cfg.source.lr_resolution_m).is_integer()  # the method's 2.4 km boxes hold whole S2 pixels
