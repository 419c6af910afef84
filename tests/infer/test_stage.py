"""Infer a shard of tiles: rolling windows of cloudless frames, batched, written as S2-DN COGs on the label grid."""

import dataclasses
import datetime as dt

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_bounds
from rio_cogeo.cogeo import cog_validate

from srpipe import BANDS, state, twin_bands
from srpipe.config import Config, InferConfig, ModelConfig, SourceConfig
from srpipe.data.grid import Tile
from srpipe.data.normalise import BandScale
from srpipe.data.s2units import from_dn
from srpipe.errors import StageError, TileError
from srpipe.infer import stage as infer
from srpipe.infer import windows as infer_data
from srpipe.models import build_model
from srpipe.models.calibration import LEVELS, Calibration
from srpipe.models.trained import TrainedModel, ensemble_mean_std, load_for_inference
from srpipe.sources.synthetic.source import SyntheticSource
from tests.helpers import BOUNDS, s2_stack


@pytest.fixture
def model(monkeypatch) -> TrainedModel:
    """A tiny untrained HighRes-Net (K = 4) that infer loads in place of the run's model."""
    torch.manual_seed(0)
    unit = BandScale(np.zeros(4, np.float32), np.full(4, 0.5, np.float32))
    net = build_model(ModelConfig(channels=8, encoder_layers=1), scale=4).eval()
    trained = TrainedModel(net=net, lr_scale=unit, hr_scale=unit, n_frames=4, scale=4)
    monkeypatch.setattr(infer, "load_for_inference", lambda cfg: trained)
    return trained


@pytest.fixture
def stacks(monkeypatch) -> dict:
    """{tile_id: S2Stack or an exception to raise}: what the source's `s2_stack` returns for each tile of the fake
    grid (a source of this test's own, behind the `Source` protocol)."""
    stacks: dict = {}

    class Stacks(SyntheticSource):
        def s2_stack(self, tile):
            if isinstance(stacks[tile.tile_id], Exception):
                raise stacks[tile.tile_id]
            return stacks[tile.tile_id]

    monkeypatch.setattr(infer_data, "make_source", lambda cfg, run_dir: Stacks(cfg))
    monkeypatch.setattr(infer_data, "tiles_by_id", lambda run: {t: Tile(t, 32618, BOUNDS, BOUNDS, "r") for t in stacks})
    return stacks


def _cfg(tmp_path, **infer_settings) -> Config:
    """A run config in `tmp_path` with these [infer] settings; CPU, inline loading unless they say otherwise."""
    return Config(run_dir=str(tmp_path), infer=InferConfig(**{"loader_workers": 0, "device": "cpu", **infer_settings}))


def _read(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_sr_tile_is_a_uint16_dn_cog_on_the_label_grid_from_the_latest_clear_frames(tmp_path, model, stacks):
    stacks["t1"] = s2_stack()
    cfg = _cfg(tmp_path, date="2016-10-05", n_frames=3)
    info = infer.infer_tile(cfg, "t1")
    assert info["frames"] == {"2016-10-05": ["2016-10-02", "2016-10-04", "2016-10-05"]}
    assert info["dates"] == ["2016-10-05"] and info["epsg"] == 32618 and info["offset_dn"] == {"2016-10-05": 0}
    path = cfg.layout.prediction(cfg.train.name, "t1", "2016-10-05")
    assert info["sha256"] == {path.name: state.file_sha256(path)}  # what mosaic checks before it reads the COG
    assert cog_validate(path, quiet=True)[0]
    with rasterio.open(path) as src:
        assert (src.width, src.height) == (240, 240) and src.crs.to_epsg() == 32618
        assert src.transform == from_bounds(*BOUNDS, 240, 240) and src.res == (10, 10)
        assert src.descriptions == BANDS and src.tags()["as_of"] == "2016-10-05"
        assert src.tags()["quantification_value"] == "10000" and src.tags()["radiometric_offset_dn"] == "0"
        assert src.dtypes == ("uint16",) * 4 and src.nodata == 0
        assert src.scales == (1e-4,) * 4 and src.offsets == (0.0,) * 4
        assert src.block_shapes[0] == (cfg.mosaic.blocksize,) * 2
        data = src.read()
    assert 1 <= data.min() and data.max() <= 6000  # label units in DN: the input's (<= 0.3) and SR's overshoot


def test_no_clear_frame_before_the_date_names_the_tile_and_the_fix(tmp_path, model, stacks):
    stacks["t1"] = s2_stack(cloudy=(0, 1, 2))
    cfg = _cfg(tmp_path, date="2016-10-03")
    with pytest.raises(TileError, match="t1.*no S2 frame on or before 2016-10-03.*set infer.date later"):
        infer.infer_tile(cfg, "t1")


def test_batched_inference_equals_tile_by_tile_inference(tmp_path, model, stacks):
    for i in range(3):
        stacks[f"t{i}"] = s2_stack(seed=i)
    images = {}
    for size in (1, 4):  # 3 tiles x 5 cloudless dates: batches of 4 mix tiles and end ragged
        cfg = _cfg(tmp_path / f"b{size}", dates="all", batch_size=size, output_dtype="float32")
        results = dict(infer.infer_shard(cfg, list(stacks)))
        assert all(isinstance(r, dict) and len(r["dates"]) == 5 for r in results.values()), results
        images[size] = {
            (t, d): _read(cfg.layout.prediction(cfg.train.name, t, d)) for t in stacks for d in results[t]["dates"]
        }
    assert images[1].keys() == images[4].keys()
    for key, one in images[1].items():
        np.testing.assert_allclose(images[4][key], one, atol=1e-5, err_msg=str(key))


def test_uint16_output_round_trips_the_float_prediction_within_one_dn_and_records_the_offset(tmp_path, model, stacks):
    stacks["t1"] = s2_stack(start=dt.date(2022, 3, 1))  # baseline 04.00, not harmonised: DN offset -1000
    source = SourceConfig(name="sentinelhub", harmonize_values=False, time_interval=("2022-01-01", "2022-03-06"))
    outputs = {}
    for dtype in ("float32", "uint16"):
        cfg = dataclasses.replace(_cfg(tmp_path / dtype, output_dtype=dtype), source=source)
        info = infer.infer_tile(cfg, "t1")
        outputs[dtype] = cfg.layout.prediction(cfg.train.name, "t1", "2022-03-06")
    assert info["offset_dn"] == {"2022-03-06": -1000}
    with rasterio.open(outputs["uint16"]) as src:
        assert src.offsets == (-0.1,) * 4 and src.scales == (1e-4,) * 4 and src.nodata == 0
        assert src.tags()["radiometric_offset_dn"] == "-1000" and "04.00" in src.tags()["offset_origin"]
        dn = src.read()
    with rasterio.open(outputs["float32"]) as src:
        assert np.isnan(src.nodata) and src.dtypes == ("float32",) * 4
        values = src.read()
    assert np.abs(from_dn(dn) - values).max() <= 1e-4  # within one DN (rounding: half a DN)


def test_rolling_window_gives_one_output_per_cloudless_date_from_the_k_latest_clear_frames(tmp_path, model, stacks):
    stacks["t1"] = s2_stack(cloudy=(1, 4), n=8)  # cloudless: days 1, 3, 4, 6, 7, 8 of October
    cfg = _cfg(tmp_path, dates="all", n_frames=3, min_frames=2, output_dtype="float32", date="2016-10-08")
    info = infer.infer_tile(cfg, "t1")
    day = {i: f"2016-10-0{i}" for i in range(1, 9)}
    assert info["frames"] == {
        day[3]: [day[1], day[3]],  # two of K = 3: the window is padded
        day[4]: [day[1], day[3], day[4]],
        day[6]: [day[3], day[4], day[6]],
        day[7]: [day[4], day[6], day[7]],
        day[8]: [day[6], day[7], day[8]],
    }
    assert list(info["skipped"]) == [day[1]] and "fewer than infer.min_frames=2" in info["skipped"][day[1]]
    written = sorted(p.name for p in (tmp_path / "predictions" / cfg.train.name / "t1").iterdir())
    assert written == [f"{day[i]}.tif" for i in (3, 4, 6, 7, 8)]
    stack = stacks["t1"]  # the padded window as the model expects it: frames 0, 2, then dead frames (mask False)
    lr = np.zeros((1, 4, 4, 60, 60), np.float32)
    lr[0, :2] = model.lr_scale.apply(stack.s2[[0, 2]], band_axis=3).transpose(0, 3, 1, 2)
    mask = np.zeros((1, 4, 60, 60), bool)
    mask[0, :2] = True
    want = model.hr_scale.invert(model.super_resolve(torch.from_numpy(lr), torch.from_numpy(mask))[0].numpy(), 0)
    np.testing.assert_allclose(_read(cfg.layout.prediction(cfg.train.name, "t1", day[3])), want, atol=1e-5)


def test_listed_dates_are_each_an_as_of_date(tmp_path, model, stacks):
    stacks["t1"] = s2_stack(cloudy=(2,))
    cfg = _cfg(tmp_path, dates=("2016-10-03", "2016-10-05"), n_frames=2)
    assert infer.infer_tile(cfg, "t1")["frames"] == {
        "2016-10-03": ["2016-10-01", "2016-10-02"],
        "2016-10-05": ["2016-10-04", "2016-10-05"],
    }


def test_a_nan_input_pixel_does_not_spread_and_unseen_pixels_alone_are_nodata(tmp_path, model, stacks):
    stack = s2_stack(cloudy=())
    stack.s2[0, 10, 10] = np.nan  # seen by the window's other frames
    stack.s2[:, 30, 31, 2] = np.inf  # seen by no frame ("valid" says True all the same)
    stacks["t1"] = stack
    cfg = _cfg(tmp_path)
    infer.infer_tile(cfg, "t1")
    dn = _read(cfg.layout.prediction(cfg.train.name, "t1", cfg.as_of_date.isoformat()))
    hole = np.zeros((240, 240), bool)
    hole[120:124, 124:128] = True  # the one LR pixel's 4 x 4 SR pixels
    assert (dn[:, hole] == 0).all() and (dn[:, ~hole] > 0).all()


def _twin(tmp_path, **infer_settings) -> tuple[Config, dict, np.ndarray]:
    """Infer tile t1 with the self-ensemble, float32 and these [infer] settings; (cfg, its `<date>.std.tif` (a valid
    COG on the SR's CRS, transform and shape: checked) as {descriptions, dtypes, count, tags, data}, the SR read)."""
    cfg = _cfg(tmp_path, self_ensemble=True, output_dtype="float32", **infer_settings)
    infer.infer_tile(cfg, "t1")
    date = cfg.as_of_date.isoformat()
    path = cfg.layout.prediction_std(cfg.train.name, "t1", date)
    assert cog_validate(path, quiet=True)[0]
    with rasterio.open(path) as src, rasterio.open(cfg.layout.prediction(cfg.train.name, "t1", date)) as sr:
        assert (src.crs, src.transform, src.shape) == (sr.crs, sr.transform, sr.shape)
        twin = {"descriptions": src.descriptions, "dtypes": src.dtypes, "count": src.count, "tags": src.tags()}
        return cfg, twin | {"data": src.read()}, sr.read()


def test_uncertainty_sidecar_is_the_views_std_in_label_units(tmp_path, model, stacks):
    model.hr_scale = BandScale(np.zeros(4, np.float32), np.array([0.5, 0.4, 0.3, 0.6], np.float32))
    stacks["t1"] = s2_stack()
    cfg, twin, _ = _twin(tmp_path, uncertainty=True)
    assert twin["descriptions"] == tuple(f"{b}_std" for b in BANDS) and twin["dtypes"] == ("float32",) * 4
    std = twin["data"]
    tw = infer_data.tile_windows(cfg, "t1", model.lr_scale, model.n_frames)
    rows = tw.index[0][tw.index[0] >= 0]
    lr = torch.zeros(1, 4, 4, 60, 60)
    mask = torch.zeros(1, 4, 60, 60, dtype=torch.bool)
    lr[0, : len(rows)], mask[0, : len(rows)] = tw.frames[rows], tw.clear[rows]
    with torch.no_grad():
        want = model.label_std(ensemble_mean_std(model.net, lr, mask)[1])[0].numpy()
    assert np.isfinite(std).all() and std.min() >= 0 and std.max() > 0
    np.testing.assert_allclose(std, want, rtol=1e-4, atol=1e-7)


def test_a_failing_tile_does_not_stop_the_shard(tmp_path, model, stacks):
    stacks.update(t1=s2_stack(), t2=TileError("t2", "EOPatch lacks data/S2_BANDS; re-run download"))
    stacks.update(t3=s2_stack(seed=3), t4=RuntimeError("disk on fire"), t5=s2_stack(cloudy=tuple(range(6))))
    cfg = _cfg(tmp_path, loader_workers=1, batch_size=2)  # errors cross the worker process
    results = dict(infer.infer_shard(cfg, list(stacks)))
    assert sorted(results) == ["t1", "t2", "t3", "t4", "t5"]
    assert isinstance(results["t1"], dict) and isinstance(results["t3"], dict)
    assert str(results["t2"]) == "tile t2: EOPatch lacks data/S2_BANDS; re-run download"
    assert isinstance(results["t4"], TileError) and "RuntimeError: disk on fire" in str(results["t4"])
    assert isinstance(results["t5"], TileError) and "no S2 frame on or before" in str(results["t5"])
    for tile in ("t1", "t3"):
        assert cfg.layout.prediction(cfg.train.name, tile, cfg.as_of_date.isoformat()).exists()


def test_infer_model_loads_packaged_weights_or_names_the_choices(tmp_path):
    from srpipe.weights import packaged

    with pytest.raises(StageError, match="infer.model = 'nope' is neither a packaged weights name"):
        load_for_inference(Config(run_dir=str(tmp_path), infer=InferConfig(model="nope")))
    assert "sample-x4" in packaged(), "no packaged weights sample-x4 (srpipe/weights/): run `make pretrain`"
    model = load_for_inference(Config(run_dir=str(tmp_path), infer=InferConfig(model="sample-x4")))
    assert model.scale == 4 and next(model.net.parameters()).dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_gpu_path_matches_the_cpu_within_bfloat16_precision(tmp_path, model, stacks):
    stacks.update(t1=s2_stack(), t2=s2_stack(seed=2))
    images = {}
    for device in ("cpu", "cuda"):
        cfg = _cfg(tmp_path / device, device=device, batch_size=2, output_dtype="float32", self_ensemble=True)
        assert all(isinstance(r, dict) for _, r in infer.infer_shard(cfg, ["t1", "t2"]))
        images[device] = [_read(cfg.layout.prediction(cfg.train.name, t, cfg.as_of_date.isoformat())) for t in stacks]
    for cpu, gpu in zip(images["cpu"], images["cuda"], strict=True):
        np.testing.assert_allclose(gpu, cpu, atol=0.01)  # bf16 autocast: ~3 significant digits of values <= 0.5


def test_data_normalisation_carries_an_affine_change_of_the_input_to_the_output(tmp_path, model, stacks, monkeypatch):
    """With infer.normalisation = "data", S2 brightened as a + b x gives SR a + b SR (the data's percentiles move
    with it); with the weights' own scaling it does not, as the net sees other values."""
    from srpipe.infer import fitted_scale as infer_norm

    monkeypatch.setattr(infer_norm, "make_source", infer_data.make_source)
    monkeypatch.setattr(infer_norm, "tiles_by_id", infer_data.tiles_by_id)
    base = s2_stack()
    outputs = {}
    for mode in ("data", "model"):
        for gain, offset in ((1.0, 0.0), (1.3, 0.05)):
            monkeypatch.setattr(infer_norm, "_FITTED", {})
            stacks["t"] = dataclasses.replace(base, s2=(offset + gain * base.s2).astype(np.float32))
            cfg = _cfg(tmp_path / f"{mode}-{gain}", output_dtype="float32", normalisation=mode)
            info = infer.infer_tile(cfg, "t")
            outputs[mode, gain] = _read(cfg.layout.prediction("highresnet", "t", info["dates"][-1]))
    for mode, close in (("data", True), ("model", False)):
        moved = 0.05 + 1.3 * outputs[mode, 1.0]
        assert np.allclose(outputs[mode, 1.3], moved, atol=1e-4) == close, mode


def _calibration(floor: float = 0.01) -> Calibration:
    """A calibration of this test's own: q = 1 + level per band, `floor` per band."""
    return Calibration(LEVELS, tuple(tuple(1.0 + a for a in LEVELS) for _ in BANDS), (floor,) * 4, 1000, 10, "val", ())


def test_interval_half_widths_sit_in_the_twin_after_the_std_pixel_for_pixel(tmp_path, model, stacks):
    model.hr_scale = BandScale(np.zeros(4, np.float32), np.array([0.5, 0.4, 0.3, 0.6], np.float32))
    model.calibration = _calibration()
    stacks["t1"] = s2_stack(cloudy=(5,))
    _, twin, image = _twin(tmp_path, interval=(0.8, 0.9))
    assert twin["descriptions"] == twin_bands((0.8, 0.9)) and twin["count"] == 12
    assert twin["tags"]["interval_levels"] == "0.80,0.90" and "10 samples" in twin["tags"]["interval_calibration"]
    twin = twin["data"]
    assert (np.isnan(twin) == np.isnan(image[[0, 1, 2, 3] * 3])).all()  # nodata exactly where the SR has none
    band_range = np.array([0.5, 0.4, 0.3, 0.6], np.float32)[:, None, None]
    std = twin[:4]
    for i, level in enumerate((0.8, 0.9)):  # q (std + floor in label units)
        np.testing.assert_allclose(twin[4 + 4 * i : 8 + 4 * i], (1 + level) * (std + 0.01 * band_range), rtol=1e-5)


def test_an_uncalibrated_model_refuses_infer_interval_naming_the_fix(tmp_path, model, stacks):
    stacks["t1"] = s2_stack()
    with pytest.raises(StageError, match="has no interval calibration.*retrain it with `srpipe train`"):
        infer.infer_tile(_cfg(tmp_path, self_ensemble=True, interval=0.9), "t1")
    assert not list(tmp_path.rglob("*.tif"))  # nothing written
