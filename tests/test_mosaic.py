"""Zone mosaics from SR tiles: cores cut and merged into a valid COG and VRT, STAC with the projection extension."""

import json
import subprocess
import sys

import numpy as np
import pystac
import pytest
import rasterio
from pystac.validation.stac_validator import GetSchemaError
from rasterio.transform import from_bounds
from rio_cogeo.cogeo import cog_validate

from srpipe.cog import write_cog
from srpipe.config import Config, MosaicConfig, PlanConfig
from srpipe.errors import StageError
from srpipe.grid import Tile
from srpipe.mosaic import _stac, mosaic_zone


def tile(x: float, y: float = 4164000) -> Tile:
    """A 2 km core buffered by 200 m (240 x 240 label px at 10 m), as the sample's grid."""
    return Tile(
        f"32618_{x / 1000:.0f}_{y / 1000:.0f}",
        32618,
        (x - 200, y - 200, x + 2200, y + 2200),
        (x, y, x + 2000, y + 2000),
        "t",
    )


def predict(cfg: Config, t: Tile, value: float) -> None:
    """A constant SR tile at `value` (its buffer at 9, so any overlap that leaks shows)."""
    image = np.full((4, 240, 240), 9.0, np.float32)
    image[:, 20:220, 20:220] = value
    path = cfg.layout.prediction(cfg.train.name, t.tile_id, cfg.as_of_date.isoformat())
    write_cog(path, image, from_bounds(*t.bounds, 240, 240), 32618, cfg.mosaic, {"tile_id": t.tile_id})


@pytest.fixture
def cfg(tmp_path) -> Config:
    return Config(run_dir=str(tmp_path / "run"), plan=PlanConfig(region="t"), mosaic=MosaicConfig(min_overview_px=100))


def test_cores_merge_into_a_valid_cog_and_vrt_and_a_missing_tile_is_reported(cfg):
    tiles = [tile(440000), tile(442000), tile(444000)]
    predict(cfg, tiles[0], 0.1)
    predict(cfg, tiles[1], 0.2)
    valid, errors, _ = cog_validate(cfg.layout.prediction(cfg.train.name, tiles[0].tile_id, "2016-10-31"), quiet=True)
    assert valid, errors  # an SR tile smaller than one block is still a COG
    result = mosaic_zone(cfg, 32618, tiles, "t_2016-10-31")
    assert result["missing"] == [tiles[2].tile_id] and result["shape"] == (200, 600)
    with rasterio.open(result["path"]) as src:
        assert cog_validate(result["path"], quiet=True)[0]
        assert src.bounds == (440000, 4164000, 446000, 4166000) and src.res == (10, 10)
        assert src.block_shapes[0] == (512, 512) and len(src.overviews(1)) == 3
        assert src.tags()["missing_tiles"] == tiles[2].tile_id
        data = src.read(1)
    assert (data[:, :200] == np.float32(0.1)).all() and (data[:, 200:400] == np.float32(0.2)).all()
    assert np.isnan(data[:, 400:]).all()
    with rasterio.open(cfg.layout.mosaics / "t_2016-10-31.vrt") as vrt:
        np.testing.assert_array_equal(vrt.read(1), data)


def test_a_zone_without_predictions_is_a_clear_error(cfg):
    with pytest.raises(StageError, match="no predictions for zone EPSG:32618"):
        mosaic_zone(cfg, 32618, [tile(440000)], "t")


def test_stac_items_carry_the_projection_extension(cfg):
    tiles = [tile(440000)]
    predict(cfg, tiles[0], 0.1)
    result = mosaic_zone(cfg, 32618, tiles, "t_2016-10-31")
    _stac(cfg, [result], cfg.as_of_date)
    collection = pystac.Collection.from_file(str(cfg.layout.stac / "collection.json"))
    item = next(iter(collection.get_items()))
    proj = pystac.extensions.projection.ProjectionExtension.ext(item)
    assert proj.epsg == 32618 and proj.shape == [200, 200] and proj.bbox == [440000, 4164000, 442000, 4166000]
    assert item.assets["cog"].get_absolute_href() == str(cfg.layout.mosaics / "t_2016-10-31.tif")
    assert "proj:epsg" not in json.loads((cfg.layout.stac / item.id / f"{item.id}.json").read_text())["properties"]
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        pytest.skip("jsonschema is not installed: pystac cannot validate")
    try:
        collection.validate_all()
    except GetSchemaError as exc:  # pystac has the core schemas; the extensions' come from stac-extensions.github.io
        pytest.skip(f"STAC schemas unreachable offline: {exc}")


def test_mosaic_does_not_import_torch_or_the_training_and_inference_modules():
    heavy = "('torch', 'srpipe.infer', 'srpipe.train')"
    code = f"import sys, srpipe.mosaic; print(sorted(m for m in {heavy} if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
