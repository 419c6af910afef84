"""Infer one tile: the latest clear frames up to the as-of date, SR written as a COG on the tile's label grid."""

import datetime as dt

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_bounds
from rio_cogeo.cogeo import cog_validate
from sentinelhub import CRS, BBox

from srpipe import BANDS, infer
from srpipe import eopatch as ep
from srpipe.config import Config, InferConfig, ModelConfig
from srpipe.curate.normalise import BandScale
from srpipe.errors import TileError
from srpipe.models import build_model
from srpipe.models.trained import TrainedModel

BOUNDS = (439800.0, 4163800.0, 442200.0, 4166200.0)


class FakePatch(dict):
    """The EOPatch fields infer reads: 6 S2 frames (60 x 60 px) a day apart from 2016-10-01, frame 2 all cloud."""

    def __init__(self, cloudy: tuple[int, ...] = (2,)) -> None:
        rng = np.random.default_rng(0)
        clouds = np.zeros((6, 60, 60, 1), bool)
        clouds[list(cloudy)] = True
        super().__init__(
            {
                ep.S2_BANDS: rng.uniform(0.02, 0.3, (6, 60, 60, 4)).astype(np.float32),
                ep.S2_VALID: np.ones((6, 60, 60, 1), bool),
                ep.S2_CLOUDS: clouds,
            }
        )
        self.timestamps = [dt.datetime(2016, 10, 1 + i) for i in range(6)]
        self.bbox = BBox(BOUNDS, CRS(32618))


@pytest.fixture
def model(monkeypatch) -> TrainedModel:
    unit = BandScale(np.zeros(4, np.float32), np.full(4, 0.5, np.float32))
    net = build_model(ModelConfig(channels=8, encoder_layers=1), scale=4).eval()
    trained = TrainedModel(net=net, lr_scale=unit, hr_scale=unit, n_frames=4, scale=4)
    monkeypatch.setattr(infer, "load_trained", lambda cfg: trained)
    return trained


def test_sr_tile_is_a_cog_on_the_label_grid_from_the_latest_clear_frames(tmp_path, monkeypatch, model):
    monkeypatch.setattr(infer.ep, "load_patch", lambda run, tile_id, scale: FakePatch())
    cfg = Config(run_dir=str(tmp_path), infer=InferConfig(date="2016-10-05", n_frames=3))
    assert infer.infer_tile(cfg, "t1") == {"frames": ["2016-10-02", "2016-10-04", "2016-10-05"]}
    path = cfg.layout.prediction(cfg.train.name, "t1", "2016-10-05")
    assert cog_validate(path, quiet=True)[0]
    with rasterio.open(path) as src:
        assert (src.width, src.height) == (240, 240) and src.crs.to_epsg() == 32618
        assert src.transform == from_bounds(*BOUNDS, 240, 240) and src.res == (10, 10)
        assert src.descriptions == BANDS and src.tags()["as_of"] == "2016-10-05"
        assert src.block_shapes[0] == (cfg.mosaic.blocksize,) * 2
        data = src.read()
    assert np.isfinite(data).all() and 0 <= data.min() and data.max() <= 0.5  # hr_scale inverted: label units


def test_no_clear_frame_before_the_date_names_the_tile_and_the_fix(tmp_path, monkeypatch, model):
    monkeypatch.setattr(infer.ep, "load_patch", lambda run, tile_id, scale: FakePatch(cloudy=(0, 1, 2)))
    cfg = Config(run_dir=str(tmp_path), infer=InferConfig(date="2016-10-03"))
    with pytest.raises(TileError, match="t1.*no S2 frame on or before 2016-10-03.*set infer.date later"):
        infer.infer_tile(cfg, "t1")
