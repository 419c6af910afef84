"""The one COG writer: valid COGs with the [mosaic] block size and compression, overviews, bands, nodata; atomic."""

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate

from srpipe import BANDS
from srpipe.config import MosaicConfig
from srpipe.data.cog import cog_writer, overview_levels, write_cog

TRANSFORM = from_origin(440000, 4170000, 10, 10)


def image(size: int = 600) -> np.ndarray:
    """(4, size, size) float32 ramp with a NaN corner (nodata)."""
    ramp = np.linspace(0, 0.5, size * size, dtype=np.float32).reshape(size, size)
    out = np.stack([ramp + 0.1 * b for b in range(4)])
    out[:, :10, :10] = np.nan
    return out


@pytest.mark.parametrize("compress", ["deflate", "zstd"])
def test_written_cog_validates_with_the_mosaic_block_size_and_compression(tmp_path, compress):
    settings = MosaicConfig(blocksize=256, compress=compress, min_overview_px=128)
    path = tmp_path / "out.tif"
    write_cog(path, image(), TRANSFORM, 32618, settings, {"tile_id": "t1", "frames": 3})
    valid, errors, _ = cog_validate(path, strict=False, quiet=True)
    assert valid, errors
    with rasterio.open(path) as src:
        assert src.block_shapes[0] == (256, 256)
        assert src.compression.name.lower() == compress
        assert len(src.overviews(1)) == overview_levels(600, 600, 128) == 3
        assert src.descriptions == BANDS and np.isnan(src.nodata)
        assert src.tags()["tile_id"] == "t1" and src.tags()["frames"] == "3"
        assert src.crs.to_epsg() == 32618 and src.transform == TRANSFORM
        np.testing.assert_array_equal(src.read(), image())
        overview = src.read(1, out_shape=(75, 75))  # average resampling: a ramp stays a ramp, not a sample of it
        assert np.nanmean(overview) == pytest.approx(np.nanmean(image()[0]), abs=1e-3)


def test_window_by_window_writes_make_the_same_cog_and_a_failed_block_leaves_nothing(tmp_path):
    settings = MosaicConfig(blocksize=256)
    whole = image(300)
    with cog_writer(tmp_path / "parts.tif", 300, 300, TRANSFORM, 32618, settings) as dst:
        for row in (0, 150):
            dst.write(whole[:, row : row + 150], window=rasterio.windows.Window(0, row, 300, 150))
    with rasterio.open(tmp_path / "parts.tif") as src:
        np.testing.assert_array_equal(src.read(), whole)
    with pytest.raises(RuntimeError), cog_writer(tmp_path / "broken.tif", 300, 300, TRANSFORM, 32618, settings):
        raise RuntimeError("the tile failed half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts.tif"]


def test_small_images_get_no_overviews():
    assert overview_levels(240, 240, 256) == 0 and overview_levels(257, 100, 256) == 1
