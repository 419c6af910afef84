"""infer.normalisation = "data": the data's S2 percentiles and the weights' scales moved onto them."""

import numpy as np
import pytest

from srpipe.config import Config
from srpipe.data.grid import Tile
from srpipe.data.labelmap import lr_to_hr_map
from srpipe.data.normalise import BandScale
from srpipe.errors import StageError
from srpipe.infer import fitted_scale as infer_norm
from srpipe.models.trained import TrainedModel
from tests.helpers import BOUNDS, s2_stack


@pytest.fixture
def tiles(monkeypatch) -> dict:
    """{tile_id: S2Stack}: the run's tiles and what the source returns for each."""
    tiles: dict = {}

    class Source:
        def s2_stack(self, tile):
            return tiles[tile.tile_id]

    monkeypatch.setattr(infer_norm, "make_source", lambda cfg, run_dir: Source())
    monkeypatch.setattr(infer_norm, "tiles_by_id", lambda run: {t: Tile(t, 32618, BOUNDS, BOUNDS, "r") for t in tiles})
    monkeypatch.setattr(infer_norm, "_FITTED", {})
    return tiles


def test_the_data_scale_is_the_percentiles_of_the_clear_pixels_of_the_runs_tiles(tmp_path, tiles):
    tiles["a"], tiles["b"] = s2_stack(seed=1), s2_stack(seed=2, cloudy=(0, 1))
    cfg = Config(run_dir=str(tmp_path))
    clear = np.concatenate([s.s2[~s.clouds] for s in tiles.values()])
    scale = infer_norm.data_scale(cfg)
    want = np.percentile(clear, cfg.curate.percentiles, axis=0)
    # 20,000 pixels drawn per tile of 18,000 / 14,400 clear ones: all of them
    np.testing.assert_allclose([scale.low, scale.high], want, rtol=1e-6)
    tiles["a"] = s2_stack(seed=3)
    assert infer_norm.data_scale(cfg) is scale  # once per process and data


def test_no_clear_pixel_is_an_error_naming_the_tiles_and_the_fix(tmp_path, tiles):
    tiles["a"] = s2_stack(cloudy=tuple(range(6)))
    with pytest.raises(StageError, match=r"no clear S2 pixel in tiles a .*infer.normalisation = 'model'"):
        infer_norm.data_scale(Config(run_dir=str(tmp_path)))


def test_fitted_scales_move_by_one_affine_map_and_keep_the_scaled_lr_to_label_map():
    lr = BandScale(np.array([0.02, 0.03, 0.01, 0.1], np.float32), np.array([0.2, 0.25, 0.3, 0.5], np.float32))
    hr = BandScale(np.array([0.0, 0.01, 0.0, 0.05], np.float32), np.array([0.25, 0.3, 0.35, 0.6], np.float32))
    data = BandScale(lr.low * 1.3 + 0.05, lr.high * 1.3 + 0.05)
    model = TrainedModel(net=None, lr_scale=lr, hr_scale=hr, n_frames=4, scale=4)
    fitted = infer_norm.fitted(model, data)
    x = np.linspace(0, 0.6, 7, dtype=np.float32)[:, None].repeat(4, 1)
    np.testing.assert_allclose(
        fitted.lr_scale.apply(1.3 * x + 0.05, 1, clip=False), lr.apply(x, 1, clip=False), atol=1e-5
    )
    np.testing.assert_allclose(fitted.hr_scale.invert(x, 1), 1.3 * hr.invert(x, 1) + 0.05, atol=1e-6)
    for a, b in zip(lr_to_hr_map(lr, hr, "cpu"), lr_to_hr_map(fitted.lr_scale, fitted.hr_scale, "cpu"), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5)
    assert model.lr_scale is lr and fitted.net is model.net
