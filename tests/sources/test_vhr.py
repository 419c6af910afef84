"""Label rasters from files (`source.vhr_files`): dates, footprints, mosaics per date and area averages onto the label
grid from another CRS, against values known by construction."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from pyproj import Transformer

from srpipe.config import ConfigError, SourceConfig
from srpipe.data.grid import Tile
from srpipe.errors import TileError
from srpipe.sources.vhr.files import VhrFiles
from tests.stacfixtures import write_cog

TILE = Tile(
    "32618_440_4164", 32618, (439800.0, 4163800.0, 440400.0, 4164400.0), (439900, 4163900, 440300, 4164300), "t"
)


def mercator_box(margin_m: float = 300.0) -> tuple[float, ...]:
    """TILE's box in EPSG:3857 grown by `margin_m`, on a 2 m grid."""
    to3857 = Transformer.from_crs(32618, 3857, always_xy=True)
    xs, ys = to3857.transform([TILE.bounds[0], TILE.bounds[2]] * 2, [TILE.bounds[1]] * 2 + [TILE.bounds[3]] * 2)
    box = (min(xs) - margin_m, min(ys) - margin_m, max(xs) + margin_m, max(ys) + margin_m)
    return tuple(round(v / 2) * 2 for v in box)


def ramp_file(path: Path, box: tuple[float, ...], pixel_m: float = 2.0, **tags) -> Path:
    """Four float32 bands in EPSG:3857: band b = 100 b + (x - x0) / 10 of the pixel centre's own coordinates."""
    w, h = int((box[2] - box[0]) / pixel_m), int((box[3] - box[1]) / pixel_m)
    gx = (np.arange(w) + 0.5) * pixel_m
    bands = np.stack([np.broadcast_to(100 * b + gx[None, :] / 10, (h, w)) for b in (1, 2, 3, 4)])
    return write_cog(path, bands, 3857, box, "float32", **tags)


def cfg(folder: Path, **extra) -> SourceConfig:
    """Label settings over 2022."""
    return SourceConfig(**({"vhr_files": str(folder), "time_interval": ("2022-01-01", "2022-12-31")} | extra))


def test_area_average_from_another_crs_hits_a_known_ramp_with_gain_and_bias(tmp_path):
    box = mercator_box()
    ramp_file(tmp_path / "ortho_2022-06-14.tif", box)
    files = VhrFiles(cfg(tmp_path, vhr_date_pattern="%Y-%m-%d", vhr_gain=(2.0,) * 4, vhr_bias=(-5.0,) * 4))
    dates, labels, valid = files.read(TILE, 10.0)
    assert dates == [dt.date(2022, 6, 14)] and labels.shape == (1, 60, 60, 4) and valid.all()
    cx = TILE.bounds[0] + (np.arange(60) + 0.5) * 10
    cy = TILE.bounds[3] - (np.arange(60) + 0.5) * 10
    x, _ = Transformer.from_crs(32618, 3857, always_xy=True).transform(*np.meshgrid(cx, cy))
    for b in range(4):  # the average of a ramp over a pixel is the ramp at its centre
        expected = 2 * (100 * (b + 1) + (x - box[0]) / 10) - 5
        assert np.abs(labels[0, ..., b] - expected).max() < 0.3  # 0.3 = 1.5 m of ramp: the 2 m source pixels


def test_files_of_one_date_are_mosaicked_first_wins_and_outside_is_invalid(tmp_path):
    box = mercator_box()
    mid = (box[0] + box[2]) / 2
    write_cog(
        tmp_path / "b_2022-06-14.tif", np.ones((4, 300, 300)), 3857, (box[0], box[1], mid + 100, box[3]), "uint16"
    )
    write_cog(tmp_path / "a_2022-06-14.tif", np.full((4, 300, 60), 2), 3857, (mid - 100, box[1], mid, box[3]), "uint16")
    files = VhrFiles(cfg(tmp_path, vhr_date_pattern="%Y-%m-%d"))
    assert files.footprint().iloc[0].area > 0
    _, labels, valid = files.read(TILE, 10.0)
    left, right = labels[0, :, :20, 0], labels[0, :, -5:, 0]
    assert (left == 1).all() and (labels[0, :, 20:40, 0] == 2).any()  # where both are, the first (a) wins
    assert not valid[0, :, -5:].any() and (right == 0).all()  # east of both files: no data


def test_dates_come_from_the_pattern_or_the_tiff_tag_and_either_missing_names_the_fix(tmp_path):
    box = mercator_box()
    ramp_file(tmp_path / "tagged.tif", box, TIFFTAG_DATETIME="2022:07:01 10:30:00")
    assert VhrFiles(cfg(tmp_path)).files[0].date == dt.date(2022, 7, 1)
    assert VhrFiles(cfg(tmp_path, time_interval=("2023-01-01", "2023-12-31"))).files == []  # outside the interval
    with pytest.raises(ConfigError, match=r"tagged.tif: its name holds no date of 'source.vhr_date_pattern'"):
        VhrFiles(cfg(tmp_path, vhr_date_pattern="%Y%m%d"))
    ramp_file(tmp_path / "untagged.tif", box)
    with pytest.raises(ConfigError, match=r"untagged.tif has no TIFFTAG_DATETIME tag; set 'source.vhr_date_pattern'"):
        VhrFiles(cfg(tmp_path))
    with pytest.raises(ConfigError, match=r"'source.vhr_files' = .*nothing\*.tif.* matches no"):
        VhrFiles(cfg(tmp_path / "nothing*.tif"))


def test_coarser_pixels_and_a_missing_band_are_errors_naming_the_file(tmp_path):
    ramp_file(tmp_path / "coarse_2022-06-14.tif", mercator_box(), pixel_m=16.0)
    with pytest.raises(TileError, match=r"coarse_2022-06-14.tif has 1\d\.\d\d m pixels, coarser than the 10 m label"):
        VhrFiles(cfg(tmp_path, vhr_date_pattern="%Y-%m-%d")).read(TILE, 10.0)
    with pytest.raises(ConfigError, match=r"has 4 bands; 'source.vhr_file_bands' asks for band\(s\) \[5\]"):
        VhrFiles(cfg(tmp_path, vhr_date_pattern="%Y-%m-%d", vhr_file_bands=(1, 2, 3, 5))).read(TILE, 20.0)
